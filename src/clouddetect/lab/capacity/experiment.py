"""Runs an experiment: for each pod count, scale, wait for exactly that many ready pods, then measure each repeat.

Before every load step the service must have drained what earlier steps left queued (an overloaded pod keeps
answering requests whose clients have gone), so each step starts from an idle service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from clouddetect.lab.capacity import evidence
from clouddetect.lab.capacity.evidence import EvidenceSettings, Snapshot
from clouddetect.lab.capacity.locust_runs import StepOutcome, run_step
from clouddetect.lab.capacity.results import Experiment, RunRecord, StepRecord, run_key
from clouddetect.lab.capacity.search import Capacity, Measure, SearchSettings, Step, find_capacity
from clouddetect.lab.capacity.targets import PodMetrics, Target, TargetError, poll
from clouddetect.loadtest.settings import HOLD_STARTED, STOPPING, LoadSettings, StepPlan
from clouddetect.settings_fields import setting
from clouddetect.verdicts import describe_kinds

Echo = Callable[[str], None]
# Start-up of Locust (reading and encoding the images) and the lab's checks around each step.
STEP_OVERHEAD_S = 8.0
# A closed loop of users without think time holds about this share of throughput x timeout with no failure:
# the rest of the timeout is the margin the slowest answers need (measured: 30 s and 5 s timeouts, one pod).
TIMEOUT_SHARE_HELD = 0.75
# The table the assignment asks for: these pod counts, each from both client locations, repeated.
ASSIGNMENT_PODS = (1, 2, 4, 8)
CLIENT_LOCATIONS = ("master", "remote")


@dataclass(frozen=True)
class Plan:
    """Which runs an experiment makes, and how long it waits for the service between them."""

    pods: list[int]
    repeats: int = setting(3, "Runs per pod count.", low=1)
    client_location: str = setting("master", "Where this load generator runs; a label that keeps both sets apart "
                                   "in one report.", choices=CLIENT_LOCATIONS)
    drain_timeout_s: float = setting(180.0, "Time the service gets to finish queued requests before a step.", low=0)
    poll_interval_s: float = setting(1.0, "Time between readiness and drain checks.", low=0, low_open=True)


# Load settings that are not conditions of the measurement: where the images come from, how the load generator is
# laid out, how progress and saturation are watched (the probe's window only shapes the search's jump).
_NOT_CONDITIONS = ("images", "locust_processes", "progress_interval_s", "probe_window_s")


def experiment_conditions(platform: str, search: SearchSettings, load: LoadSettings, image_count: int,
                          client_link: dict[str, Any] | None) -> dict[str, Any]:
    """What every run of an experiment shares, recorded in experiment.json; a resumed experiment must match it."""
    shared = {f.name: getattr(load, f.name) for f in fields(load) if f.name not in _NOT_CONDITIONS}
    return {"platform": platform, **shared, **asdict(search), "image_count": image_count, "client_link": client_link}


def served(before: dict[str, PodMetrics], after: dict[str, PodMetrics]) -> dict[str, int]:
    """Requests each pod answered between two readings (a pod new since the first counts from zero)."""
    return {
        name: metrics.requests - (before[name].requests if name in before else 0) for name, metrics in after.items()
    }


def wait_drained(platform: Target, timeout_s: float, interval_s: float) -> None:
    def idle() -> bool | None:
        return True if sum(m.in_flight for m in platform.pod_metrics().values()) == 0 else None

    poll(idle, timeout_s, interval_s, "the service to finish the requests in flight")


def expected_run_s(pods: int, search: SearchSettings, load: LoadSettings, pod_rps: float) -> float:
    """How long one run should take if its first guesses hold, from the time each phase needs at ``pod_rps``.

    Users without think time fail near ``TIMEOUT_SHARE_HELD`` x throughput x timeout; the requests in flight
    when a step ends take about one response time to be judged; the first timeout is seen a timeout after it began.
    """
    rps = pods * pod_rps
    capacity = min(search.max_users, rps * (TIMEOUT_SHARE_HELD * load.timeout_s + load.wait_s))
    start = min(capacity, rps * (search.start_fraction * load.timeout_s + load.wait_s)) if search.start_fraction else 0
    response_s = min(load.timeout_s, capacity / rps)
    jump_s = start / load.jump_spawn_rate
    probe_s = 2 * load.probe_window_s
    # After the first timeout the service still works off the requests of users added while it was coming.
    backlog_s = search.spawn_rate * load.timeout_s / rps
    search_s = probe_s + jump_s + (capacity - start) / search.spawn_rate + load.timeout_s + response_s + backlog_s
    ramped = min(capacity, max(1.0, capacity * search.step_down_pct / 100)) if search.start_fraction else capacity
    confirm_s = ((capacity - ramped) / load.jump_spawn_rate + ramped / search.confirm_spawn_rate + search.hold_s
                 + response_s)
    slo_s = 0.0
    if search.slo_p95_s:
        slo_users = min(capacity, rps * (search.slo_p95_s + load.wait_s))
        slo_s = slo_users / search.spawn_rate + search.slo_hold_s + search.slo_p95_s + STEP_OVERHEAD_S
    return search_s + confirm_s + slo_s + 2 * STEP_OVERHEAD_S


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Runner:
    def __init__(self, platform: Target, experiment: Experiment, plan: Plan, search: SearchSettings,
                 load: LoadSettings, echo: Echo, thresholds: EvidenceSettings | None = None):
        self.platform = platform
        self.experiment = experiment
        self.plan = plan
        self.search = search
        self.load = load
        self.echo = echo
        self.thresholds = thresholds or EvidenceSettings()
        self.placement: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        # A simulated link's rate is known, and its interface is this host's route to the service.
        link = experiment.conditions.get("client_link") or {}
        self.link_rate_mbit = link.get("bandwidth_mbit")
        self.link_interface = (experiment.environment.get("client_network") or {}).get("interface") if link else None

    def say(self, text: str) -> None:
        self.echo(f"[{time.monotonic() - self.started:6.0f} s] {text}")

    def run(self) -> None:
        for pods in self.plan.pods:
            pending = [r for r in range(1, self.plan.repeats + 1)
                       if not self.experiment.done(run_key(self.plan.client_location, pods, r))]
            if not pending:
                self.say(f"{pods} pods: all {self.plan.repeats} runs already recorded")
                continue
            self.say(f"{pods} pods: scaling")
            self.platform.scale(pods)
            names = self.platform.wait_ready(pods)
            self.placement = self.platform.placement()
            self.experiment.note_placement(self.placement)
            self.say(f"{pods} pods ready: " + ", ".join(f"{n} on {self.placement.get(n, {}).get('node')}"
                                                       for n in names))
            for repeat in pending:
                record = self.run_once(pods, repeat)
                self.experiment.add(record)
                self.say(f"{pods} pods, repeat {repeat}/{self.plan.repeats}: max {record.max_users} users "
                         f"(timeout {record.timeout_s:g} s), avg {_ms(record.avg_ms)}, p95 {_ms(record.p95_ms)}, "
                         f"saturation {_rps(record.saturation_rps)}, users within the objective "
                         f"{record.slo_users if record.slo_users is not None else '-'}; "
                         f"{_evidence_line(record.evidence)}; took {record.duration_s:.0f} s; recorded")

    def run_once(self, pods: int, repeat: int) -> RunRecord:
        key = run_key(self.plan.client_location, pods, repeat)
        started_at, started_s = _now(), time.monotonic()
        endpoint = self.platform.endpoint()
        label = f"{pods} pods, repeat {repeat}/{self.plan.repeats}"
        capacity = find_capacity(self._measure(endpoint, self.experiment.raw_dir(key), label), self.search,
                                 self.load.wait_s)
        return self._record(key, endpoint, capacity, started_at, time.monotonic() - started_s)

    def _measure(self, endpoint: str, raw_dir: Path, label: str) -> Measure:
        def measure(step: StepPlan) -> Step:
            wait_drained(self.platform, self.plan.drain_timeout_s, self.plan.poll_interval_s)
            before = self.platform.pod_metrics()
            step_label = f"{label}, {step.name} to {step.users} users"
            self.say(f"{step_label}: starting")
            snapshots: dict[str, Snapshot] = {}

            def on_phase(phase: str, locust: psutil.Process) -> None:
                try:
                    snapshots[phase] = evidence.take(self.platform.pod_metrics, locust, self.link_interface)
                except (TargetError, psutil.Error) as exc:  # evidence is worth a line, not the experiment
                    self.say(f"{step_label}: no evidence at {phase}: {exc}")

            outcome = run_step(endpoint, step, self.load, raw_dir / step.name,
                               lambda line: self.say(f"{step_label}: {line}"), on_phase)
            verdict = "held" if outcome.passed else f"failed ({describe_kinds(outcome.failure_kinds, none='none')})"
            unjudged = outcome.requests_sent - outcome.requests_judged
            self.say(f"{step_label}: {verdict}; p95 {_ms(outcome.p95_ms)}; {outcome.requests_judged} of "
                     f"{outcome.requests_sent} requests judged" + (f" ({unjudged} never answered)" if unjudged else "")
                     + (f"; {outcome.burst_failures} failed in the jump's burst, not counted"
                        if outcome.burst_failures else ""))
            found = None
            if outcome.passed and HOLD_STARTED in snapshots and STOPPING in snapshots:
                found = evidence.evidence(snapshots[HOLD_STARTED], snapshots[STOPPING], self.link_rate_mbit)
                self.say(f"{step_label}: {_evidence_line(found)}")
            return Step(outcome, served(before, self.platform.pod_metrics()), found)

        return measure

    def _record(self, key: tuple[str, int, int], endpoint: str, capacity: Capacity, started_at: str,
                duration_s: float) -> RunRecord:
        location, pods, repeat = key
        accepted = capacity.accepted
        figures = accepted.outcome if accepted else None
        slo = capacity.slo_held.outcome if capacity.slo_held else None
        # Saturated: the search found where requests fail, so the accepted load is at the service's limit.
        found = accepted.evidence if accepted else None
        flags = evidence.bounds(found, capacity.breaking_users is not None, self.thresholds) if found else {}
        names = self.platform.pods()
        return RunRecord(
            client_location=location, pods=pods, repeat=repeat, endpoint=endpoint,
            pod_names=names, started_at=started_at, finished_at=_now(),
            breaking_users=capacity.breaking_users,
            breaking_failure_kinds=capacity.search.outcome.failure_kinds,
            confirmed_users_tried=[s.outcome.users for s in capacity.confirmations],
            max_users=capacity.max_users,
            avg_ms=figures.avg_ms if figures else None,
            median_ms=figures.median_ms if figures else None,
            p95_ms=figures.p95_ms if figures else None,
            p99_ms=figures.p99_ms if figures else None,
            rps=figures.rps if figures else None,
            requests=figures.requests if figures else 0,
            failures=figures.failures if figures else 0,
            failure_kinds=figures.failure_kinds if figures else {},
            pod_requests=accepted.pod_requests if accepted else {},
            timeout_s=self.load.timeout_s, hold_s=self.search.hold_s,
            spawn_rate=self.search.spawn_rate, confirm_spawn_rate=self.search.confirm_spawn_rate,
            wait_s=self.load.wait_s,
            held_s=figures.held_s if figures else None,
            stable=figures.stable if figures else None,
            window_ms=figures.window_ms if figures else [],
            saturation_rps=capacity.saturation_rps,
            search_saturation_rps=capacity.search.outcome.saturation_rps,
            slo_p95_s=self.search.slo_p95_s or None,
            slo_users=capacity.slo_users,
            slo_p95_ms=slo.p95_ms if slo else None,
            requests_sent=sum(s.outcome.requests_sent for s in capacity.steps),
            requests_judged=sum(s.outcome.requests_judged for s in capacity.steps),
            duration_s=round(duration_s, 1),
            steps=[_step_record(s.outcome) for s in capacity.steps],
            evidence={**found, **flags} if found else None,
            pod_nodes={name: self.placement.get(name, {}).get("node") for name in names},
            client_bound=flags["client_bound"] if found else None,
            machine_bound=flags["machine_bound"] if found else None,
        )


def _step_record(outcome: StepOutcome) -> StepRecord:
    return StepRecord(name=outcome.name, users=outcome.users, passed=outcome.passed,
                      first_failure_users=outcome.first_failure_users, held_s=outcome.held_s,
                      stable=outcome.stable, p95_ms=outcome.p95_ms, requests_sent=outcome.requests_sent,
                      requests_judged=outcome.requests_judged, failures=outcome.failures,
                      failure_kinds=outcome.failure_kinds, burst_failures=outcome.burst_failures)


def _evidence_line(found: dict[str, Any] | None) -> str:
    """The evidence in one line, as the progress and the report say it."""
    if not found:
        return "no evidence (nothing held)"
    return evidence.describe(found)


def _rps(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} req/s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
