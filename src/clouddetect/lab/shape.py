"""The load plan of one lab step, loaded by Locust next to the locustfile (``-f locustfile.py,shape.py``).

Users ramp at the spawn rate towards a target; the step ends at the first failed request, or once the target has
been held for the hold time. Statistics are reset when the target is reached, so the figures of a held step are
those of the steady state, not of the ramp. The target rises by one second's worth of users per tick: a
distributed master blocks in ``start()`` until a ramp completes, and small steps keep it checking for failures.
At exit the outcome and the final figures go to a JSON file for the lab (Locust's CSVs lag by up to a second).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import RequestStats

from clouddetect.lab.load import PROGRESS_PREFIX

# Failures reach a distributed master as the repr of the worker's exception.
_CATCH_RESPONSE_REPR = re.compile(r"^CatchResponseError\('(.*)'\)$")


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    options = {
        "--lab-users": {"type": int, "required": True, "help": "Users to reach and hold."},
        "--lab-spawn-rate": {"type": float, "required": True, "help": "Users started per second."},
        "--lab-hold-s": {"type": float, "default": 0.0, "help": "Time to hold the target once reached."},
        "--lab-outcome": {"required": True, "help": "JSON file the outcome is written to."},
        "--lab-progress-interval-s": {"type": float, "default": 5.0, "help": "Time between progress lines."},
    }
    for flag, kwargs in options.items():
        parser.add_argument(flag, include_in_web_ui=False, **kwargs)


class CapacityShape(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()
        self.first_failure_users: int | None = None
        self.peak_users = 0
        self.reached_s: float | None = None
        self.stopped_s: float | None = None
        self.last_progress_s = -math.inf

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        now_s = self.get_run_time()
        users = self.runner.user_count
        self.peak_users = max(self.peak_users, users)
        self._progress(now_s, users, options.lab_progress_interval_s)
        if self.runner.stats.total.num_failures:
            self.first_failure_users = users
            return self._stop(now_s)
        if self.reached_s is None and users >= options.lab_users:
            self.reached_s = now_s
            self.runner.stats.reset_all()
        if self.reached_s is not None and now_s - self.reached_s >= options.lab_hold_s:
            return self._stop(now_s)
        target = min(options.lab_users, max(1, round(options.lab_spawn_rate * (now_s + 1))))
        return target, options.lab_spawn_rate

    def _stop(self, now_s: float) -> None:
        self.stopped_s = now_s
        return None

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
        return {
            "first_failure_users": self.first_failure_users,
            "peak_users": self.peak_users,
            "held_s": None if self.reached_s is None or self.stopped_s is None else self.stopped_s - self.reached_s,
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
