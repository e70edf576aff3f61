"""The load plan of one lab step, loaded by Locust next to the locustfile (``-f locustfile.py,shape.py``).

Users ramp at the spawn rate towards a target, after an optional quick jump to a level known to be safe; the step
ends at the first failed request, or once the target has been held for the hold time and the hold's response times
are stable (``stability.py``), extended up to a bound while they are not. Statistics are reset when the hold starts
(the target reached, the jump's burst judged), so the figures of a held step are those of the steady state, not of
the ramp.

A search step (``--lab-start-fraction`` above 0) also measures the saturation throughput while ramping and, once
saturated, jumps to that share of throughput x timeout (plus think time), well below where the first timeout is
expected, and ramps on from there. A confirmation jumps at once to its quick start. Requests sent from when a jump
is decided until it is done meet its burst, not a steady load: their failures are counted apart
(``burst_failures``) and neither end nor fail the step, and the hold starts only once every one of them is judged
(or a stop timeout after the jump: a request lost for good fails the step as never answered), so its figures are
the load's alone.

When a step ends no user starts another request, and the requests in flight are awaited (Locust's stop timeout)
and judged; one of them that fails fails the step, at the users it was sent under. The outcome records requests
sent and judged, counted by the users themselves. The target rises by one
second's worth of users per tick: a distributed master blocks in ``start()`` until a ramp completes, and small
steps keep it checking for failures. At exit the outcome goes to a JSON file for the lab.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import gevent
from locust import LoadTestShape, events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import RequestStats

from clouddetect.loadtest import tally
from clouddetect.loadtest.settings import (
    HOLD_STARTED,
    PROGRESS_PREFIX,
    SHAPE_SETTINGS,
    STEP_SETTINGS,
    STOPPING,
    LoadSettings,
    StepPlan,
    locust_flag,
    stop_timeout_s,
)
from clouddetect.loadtest.stability import Sample, SaturationProbe, is_stable, users_at, window_means
from clouddetect.settings_fields import add_arguments

# Failures reach a distributed master as the repr of the worker's exception.
_CATCH_RESPONSE_REPR = re.compile(r"^CatchResponseError\('(.*)'\)$")
# How often a distributed master looks for its workers' last counts while they finish their requests.
DRAIN_POLL_S = 0.5
PROBE_WINDOWS_PER_TIMEOUT = 4


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    add_arguments(parser, LoadSettings, locust_flag, SHAPE_SETTINGS, include_in_web_ui=False)
    add_arguments(parser, StepPlan, locust_flag, STEP_SETTINGS, include_in_web_ui=False)
    parser.add_argument("--lab-outcome", required=True, include_in_web_ui=False,
                        help="JSON file the outcome is written to.")


class CapacityShape(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()
        self.first_failure_users: int | None = None
        self.peak_users = 0
        self.reached_s: float | None = None
        self.stopped_s: float | None = None
        self.last_progress_s = -math.inf
        self.history: list[tuple[float, int]] = []  # (wall-clock time, users)
        self.hold: list[Sample] = []
        self.window_ms: list[float | None] = []
        self.stable: bool | None = None
        self.jump_to = 0
        self.jump_set_wall = 0.0  # when the jump was decided: a confirmation's from its start
        self.jump_done_s: float | None = None
        self.jump_done_wall: float | None = None
        self.probe: SaturationProbe | None = None

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        if self.probe is None:  # options are parsed once the shape exists
            # A short timeout fails early: windows shrink with it (to a tick) so saturation is seen first.
            window_s = max(1.0, min(options.lab_probe_window_s, options.request_timeout_s / PROBE_WINDOWS_PER_TIMEOUT))
            self.probe = SaturationProbe(window_s)
            self.jump_to = options.lab_start_users
        now_s = self.get_run_time()
        users = self.runner.user_count
        total = self.runner.stats.total
        self.peak_users = max(self.peak_users, users)
        self.history.append((time.time(), users))
        self._progress(now_s, users, options.lab_progress_interval_s)
        # From the users' own counts: a task that raised is in no Locust figure.
        if (first_failure_users := self._first_failure_users(users)) is not None:
            self.first_failure_users = first_failure_users
            self.probe.overloaded = True
            return self._stop(now_s)
        if options.lab_start_fraction > 0:
            self._search(Sample(now_s, users, total.num_requests, total.total_response_time), options)
        if self.reached_s is None and users >= options.lab_users and self._burst_judged(now_s, options):
            self.reached_s = now_s
            print(f"{PROGRESS_PREFIX} {now_s:.0f} s, {HOLD_STARTED} {users} users", flush=True)
            self.runner.stats.reset_all()
        if self.reached_s is not None and self._held(now_s - self.reached_s, options):
            return self._stop(now_s)
        return self._target(now_s, users, options)

    def _search(self, sample: Sample, options: Any) -> None:
        assert self.probe is not None
        self.probe.add(sample)
        if not self.probe.saturated or self.jump_to or self.jump_done_s is not None:
            return
        start = math.floor(self.probe.rps * (options.lab_start_fraction * options.request_timeout_s + options.wait_s))
        if start > sample.users:
            self.jump_to, self.jump_set_wall = min(start, options.lab_users), time.time()
            print(f"{PROGRESS_PREFIX} saturated at {self.probe.rps:.1f} req/s; jumping to {self.jump_to} users",
                  flush=True)

    def _target(self, now_s: float, users: int, options: Any) -> tuple[int, float]:
        if self.jump_to and self.jump_done_s is None:
            if users < self.jump_to:
                return self.jump_to, options.lab_jump_spawn_rate
            self.jump_done_s, self.jump_done_wall = now_s, time.time()
        base, since_s = (self.jump_to, self.jump_done_s) if self.jump_done_s is not None else (0, 0.0)
        ramped = base + round(options.lab_spawn_rate * (now_s - since_s + 1))
        return min(options.lab_users, max(1, ramped)), options.lab_spawn_rate

    def _held(self, held_s: float, options: Any) -> bool:
        """Whether the hold is over: held long enough and stable, or extended as far as allowed."""
        total = self.runner.stats.total
        self.hold.append(Sample(held_s, self.runner.user_count, total.num_requests, total.total_response_time))
        if held_s < options.lab_hold_s:
            return False
        windows = min(options.lab_hold_windows, math.floor(options.lab_hold_s))
        self.window_ms = window_means(self.hold, held_s - options.lab_hold_s, held_s, windows)
        self.stable = is_stable(self.window_ms, options.lab_stable_tolerance_pct)
        return self.stable is not False or held_s >= options.lab_hold_s + options.lab_max_extension_s

    def _burst(self) -> tally.Window | None:
        """When requests met the jump's burst (open-ended while it is under way); None without a jump.

        Those requests met the jump, not the load it reaches. Many users starting at once open their connections
        together, and kube-proxy's random pick gives some pods more of them than their share: measured before this
        rule, an 8-pod confirmation of 98 users failed on 503s within 3 s of its burst and stepped down to 59,
        which then held with a p95 of 5.4 s against a 10 s timeout."""
        if not self.jump_to:
            return None
        return self.jump_set_wall, math.inf if self.jump_done_wall is None else self.jump_done_wall

    def _burst_judged(self, now_s: float, options: Any) -> bool:
        """Whether the hold may start: a burst request judged late (up to a stop timeout) would otherwise land in
        its figures and fail a hold that met no failure of its own. A request still unjudged a stop timeout after
        the jump is lost, and fails the step as never answered."""
        burst = self._burst()
        if burst is None:
            return True
        if self.jump_done_s is None:
            return False
        if now_s - self.jump_done_s >= stop_timeout_s(options.request_timeout_s):
            return True
        return self._reported_since(burst[1]) and self._tally().judged_all_sent_before(burst[1])

    def _reported_since(self, moment: float) -> bool:
        """Whether every live worker's counts are newer than ``moment``: a master hears each every few seconds.

        Reports are stamped by the worker's clock, the moment by the master's: one machine's (``--processes``), or
        clocks kept in step."""
        if not isinstance(self.runner, MasterRunner):
            return True
        clients = self.runner.clients
        live = [worker.id for worker in (*clients.ready, *clients.spawning, *clients.running)]
        return all(w in tally.WORKERS and tally.WORKERS[w].reported_at >= moment for w in live)

    def _burst_failures(self) -> int:
        burst = self._burst()
        return 0 if burst is None else self._tally().failures_sent_within(burst)

    def _first_failure_users(self, users_now: int) -> int | None:
        """Users when the first counted failed request was sent (the load that made it fail); None if none was."""
        sent_at = self._tally().first_failure_sent_at(excluding=self._burst())
        if sent_at is None:
            return None
        met = users_at(self.history, sent_at)
        return users_now if met is None else max(1, met)

    def _tally(self) -> tally.Tally:
        if isinstance(self.runner, MasterRunner):
            return tally.combined(list(tally.WORKERS.values()))
        return tally.LOCAL

    def _stop(self, now_s: float) -> None:
        """No new requests; those in flight finish (up to Locust's stop timeout) and are judged.

        A local runner stops its users itself. A distributed master sends its workers zero users instead (stopping
        them would leave the workers waiting for a master that quits), then hears their last counts.
        """
        self.stopped_s = now_s
        print(f"{PROGRESS_PREFIX} {now_s:.0f} s, {STOPPING}; waiting for the requests in flight", flush=True)
        if isinstance(self.runner, MasterRunner):
            self.runner.start(0, spawn_rate=max(1.0, float(self.runner.user_count)))
        else:
            self.runner.stop()
        deadline = time.monotonic() + stop_timeout_s(self.runner.environment.parsed_options.request_timeout_s)
        while not self._drained() and time.monotonic() < deadline:
            gevent.sleep(DRAIN_POLL_S)
        return None

    def _drained(self) -> bool:
        counted = self._tally()
        return self.runner.user_count == 0 and counted.judged >= counted.sent

    def _progress(self, now_s: float, users: int, interval_s: float) -> None:
        if now_s - self.last_progress_s < interval_s:
            return
        self.last_progress_s = now_s
        total = self.runner.stats.total
        print(
            f"{PROGRESS_PREFIX} {now_s:.0f} s, {users} users, {total.num_requests} requests, "
            f"{total.num_failures} failures, {total.current_rps:.1f} req/s, avg {total.avg_response_time:.0f} ms",
            flush=True,
        )

    def outcome(self) -> dict[str, Any]:
        counted = self._tally()
        return {
            # Over every request judged, those judged after the step stopped included: the earliest counted failure.
            "first_failure_users": self._first_failure_users(self.first_failure_users or self.peak_users),
            "burst_failures": self._burst_failures(),
            "peak_users": self.peak_users,
            "held_s": None if self.reached_s is None or self.stopped_s is None else self.stopped_s - self.reached_s,
            "start_users": self.jump_to,
            "saturation_rps": self.probe.rps if self.probe else None,
            "stable": self.stable,
            "window_ms": self.window_ms,
            "requests_sent": counted.sent,
            "requests_judged": counted.judged,
            **_figures(self.runner.stats),
        }


def _figures(stats: RequestStats) -> dict[str, Any]:
    total = stats.total
    kinds: dict[str, int] = {}
    for error in stats.errors.values():
        kind = _kind(error.error)
        kinds[kind] = kinds.get(kind, 0) + error.occurrences
    answered = total.num_requests > 0
    return {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "failure_kinds": kinds,
        "avg_ms": total.avg_response_time if answered else None,
        "median_ms": total.median_response_time if answered else None,
        "p95_ms": total.get_response_time_percentile(0.95) if answered else None,
        "p99_ms": total.get_response_time_percentile(0.99) if answered else None,
        "rps": total.total_rps,
    }


def _kind(error: object) -> str:
    text = error if isinstance(error, str) else repr(error)
    match = _CATCH_RESPONSE_REPR.match(text)
    return match.group(1) if match else text


@events.quitting.add_listener
def _write_outcome(environment: Environment, **_kwargs: object) -> None:
    shape = environment.shape_class
    if isinstance(environment.runner, WorkerRunner) or not isinstance(shape, CapacityShape):
        return
    Path(environment.parsed_options.lab_outcome).write_text(json.dumps(shape.outcome(), indent=2) + "\n")
