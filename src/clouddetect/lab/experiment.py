"""Runs an experiment: for each pod count, scale, wait for exactly that many ready pods, then measure each repeat.

Before every load step the service must have drained what earlier steps left queued (an overloaded pod keeps
answering requests whose clients have gone), so each step starts from an idle service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clouddetect.lab.load import LoadSettings, run_step
from clouddetect.lab.platform import Platform, PodMetrics, poll
from clouddetect.lab.results import Experiment, RunRecord, run_key
from clouddetect.lab.search import Capacity, Measure, SearchSettings, Step, find_capacity

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    pods: list[int]
    repeats: int
    client_location: str
    drain_timeout_s: float
    poll_interval_s: float


def served(before: dict[str, PodMetrics], after: dict[str, PodMetrics]) -> dict[str, int]:
    """Requests each pod answered between two readings (a pod new since the first counts from zero)."""
    return {
        name: metrics.requests - (before[name].requests if name in before else 0) for name, metrics in after.items()
    }


def wait_drained(platform: Platform, timeout_s: float, interval_s: float) -> None:
    def idle() -> bool | None:
        return True if sum(m.in_flight for m in platform.pod_metrics().values()) == 0 else None

    poll(idle, timeout_s, interval_s, "the service to finish the requests in flight")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Runner:
    def __init__(self, platform: Platform, experiment: Experiment, plan: Plan, search: SearchSettings,
                 load: LoadSettings, echo: Echo):
        self.platform = platform
        self.experiment = experiment
        self.plan = plan
        self.search = search
        self.load = load
        self.echo = echo
        self.started = time.monotonic()

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
            self.say(f"{pods} pods ready: {', '.join(names)}")
            for repeat in pending:
                record = self.run_once(pods, repeat)
                self.experiment.add(record)
                self.say(f"{pods} pods, repeat {repeat}/{self.plan.repeats}: max {record.max_users} users, "
                         f"avg {_ms(record.avg_ms)}, {record.rps or 0:.1f} req/s; recorded")

    def run_once(self, pods: int, repeat: int) -> RunRecord:
        key = run_key(self.plan.client_location, pods, repeat)
        started_at = _now()
        endpoint = self.platform.endpoint()
        label = f"{pods} pods, repeat {repeat}/{self.plan.repeats}"
        capacity = find_capacity(self._measure(endpoint, self.experiment.raw_dir(key), label), self.search)
        return self._record(key, endpoint, capacity, started_at)

    def _measure(self, endpoint: str, raw_dir: Path, label: str) -> Measure:
        def measure(name: str, users: int, spawn_rate: float, hold_s: float) -> Step:
            wait_drained(self.platform, self.plan.drain_timeout_s, self.plan.poll_interval_s)
            before = self.platform.pod_metrics()
            step_label = f"{label}, {name} to {users} users"
            self.say(f"{step_label}: starting")
            outcome = run_step(endpoint, users, spawn_rate, hold_s, self.load, raw_dir / name,
                               lambda line: self.say(f"{step_label}: {line}"))
            verdict = "held" if outcome.passed else f"failed ({_kinds(outcome.failure_kinds)})"
            self.say(f"{step_label}: {verdict}")
            return Step(outcome, served(before, self.platform.pod_metrics()))

        return measure

    def _record(self, key: tuple[str, int, int], endpoint: str, capacity: Capacity, started_at: str) -> RunRecord:
        location, pods, repeat = key
        accepted = capacity.accepted
        figures = accepted.outcome if accepted else None
        return RunRecord(
            client_location=location, pods=pods, repeat=repeat, endpoint=endpoint,
            pod_names=self.platform.pods(), started_at=started_at, finished_at=_now(),
            breaking_users=capacity.breaking_users,
            breaking_failure_kinds=capacity.search.outcome.failure_kinds,
            confirmed_users_tried=[s.outcome.users for s in capacity.confirmations],
            max_users=capacity.max_users,
            avg_ms=figures.avg_ms if figures else None,
            median_ms=figures.median_ms if figures else None,
            p95_ms=figures.p95_ms if figures else None,
            rps=figures.rps if figures else None,
            requests=figures.requests if figures else 0,
            failures=figures.failures if figures else 0,
            failure_kinds=figures.failure_kinds if figures else {},
            pod_requests=accepted.pod_requests if accepted else {},
            timeout_s=self.load.timeout_s, hold_s=self.search.hold_s,
            spawn_rate=self.search.spawn_rate, confirm_spawn_rate=self.search.confirm_spawn_rate,
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{count} x {kind}" for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1])) or "none"
