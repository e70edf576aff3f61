"""The report's discussion as facts: values measured or derived from the runs, which the templates put into words.

The wording lives in ``templates/discussion.md.j2``; everything it says about the data is computed here, so the text
follows the measurements (a pod count or a client location that was not measured is named as missing, not guessed).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clouddetect.lab.capacity.evidence import EvidenceSettings
from clouddetect.lab.capacity.experiment import ASSIGNMENT_PODS, CLIENT_LOCATIONS, TIMEOUT_SHARE_HELD
from clouddetect.lab.capacity.results import Experiment, RunRecord

# One request on the wire: a base64 test image in JSON (~220 KB measured), for the bandwidth a load needs.
REQUEST_BYTES = 220_000
# Scaling at least this close to linear is called linear.
LINEAR_EFFICIENCY = 0.9
# Max users below this share of the timeout bound are called out: the queue alone does not explain them.
LOW_BOUND_RATIO = 0.6
BITS_PER_BYTE = 8
BITS_PER_MBIT = 1_000_000


@dataclass(frozen=True)
class Spread:
    """Mean and standard deviation over the repeats of one configuration."""

    mean: float
    std: float
    n: int


def spread_of(values: Sequence[float | None]) -> Spread | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return Spread(statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else 0.0, len(known))


@dataclass(frozen=True)
class Balance:
    """How one repeat's requests were spread over its pods."""

    pods: int
    answered: dict[str, int]

    @property
    def idle_pods(self) -> int:
        return self.pods - sum(1 for count in self.answered.values() if count > 0)

    @property
    def busiest_over_mean(self) -> float | None:
        total = sum(self.answered.values())
        return max(self.answered.values()) * self.pods / total if total else None

    @property
    def quietest_over_mean(self) -> float | None:
        total = sum(self.answered.values())
        if not total:
            return None
        return 0.0 if self.idle_pods else min(self.answered.values()) * self.pods / total


@dataclass(frozen=True)
class Evidence:
    """What bound one configuration over its repeats' holds (``lab/capacity/evidence.py``), where it was measured."""

    pod_cpu_cores: Spread | None = None
    pod_cpu_limit_cores: float | None = None
    throttled_share: Spread | None = None
    memory_peak_mib: float | None = None  # the most any pod reached
    memory_limit_mib: float | None = None
    client_cpu_share_max: float | None = None  # the busiest Locust process of any repeat
    link_share: Spread | None = None
    machine_busy_share: Spread | None = None
    client_bound_runs: int = 0
    machine_bound_runs: int = 0
    reasons: tuple[str, ...] = ()

    @property
    def measured(self) -> bool:
        return self.pod_cpu_cores is not None or self.client_cpu_share_max is not None

    @property
    def bound(self) -> bool:
        """The client or the machine limited at least one repeat: the figures are not the service's alone."""
        return bool(self.client_bound_runs or self.machine_bound_runs)

    @property
    def cpu_used_share(self) -> float | None:
        if self.pod_cpu_cores is None or not self.pod_cpu_limit_cores:
            return None
        return self.pod_cpu_cores.mean / self.pod_cpu_limit_cores


def evidence_of(runs: Sequence[RunRecord]) -> Evidence:
    found = [r.evidence for r in runs if r.evidence]
    if not found:
        return Evidence()

    def values(name: str) -> list[float | None]:
        return [e.get(name) for e in found]

    def most(name: str) -> float | None:
        return max((v for v in values(name) if v is not None), default=None)

    reasons = dict.fromkeys(reason for e in found for reason in e.get("bound_reasons") or [])
    return Evidence(
        spread_of(values("pod_cpu_cores_used_mean")), most("pod_cpu_limit_cores"),
        spread_of(values("pod_cpu_throttled_period_share_mean")), most("pod_memory_peak_mib_max"),
        most("pod_memory_limit_mib"), most("client_cpu_core_share_max"), spread_of(values("link_utilisation_share")),
        spread_of(values("load_generator_machine_cpu_busy_share")),
        sum(1 for e in found if e.get("client_bound")), sum(1 for e in found if e.get("machine_bound")),
        tuple(reasons))


@dataclass(frozen=True)
class Point:
    """One configuration (client location, pods) over its repeats, and what follows from it."""

    location: str
    pods: int
    repeats: int
    timeout_s: float
    wait_s: float
    max_users: Spread
    avg_ms: Spread | None
    median_ms: Spread | None
    p95_ms: Spread | None
    p99_ms: Spread | None
    held_rps: Spread | None
    saturation_rps: Spread | None
    slo_users: Spread | None
    slo_p95_s: float | None
    breaking_users: Spread | None
    breaking_failures: dict[str, int]
    balances: list[Balance]
    evidence: Evidence
    efficiency: float | None = None

    @property
    def per_pod_rps(self) -> float | None:
        return self.saturation_rps.mean / self.pods if self.saturation_rps else None

    @property
    def service_ms(self) -> float | None:
        """Wall time a pod needs per request when saturated: its CPU share stretches the CPU time per image."""
        return 1000 / self.per_pod_rps if self.per_pod_rps else None

    @property
    def waiting_share(self) -> float | None:
        """Share of the mean response time at capacity spent waiting rather than being served."""
        if not self.avg_ms or not self.service_ms or self.avg_ms.mean <= 0:
            return None
        return max(0.0, 1 - self.service_ms / self.avg_ms.mean)

    @property
    def in_system(self) -> float | None:
        """Requests in the service at once while holding the capacity (Little's law on the held load)."""
        return self.held_rps.mean * self.avg_ms.mean / 1000 if self.held_rps and self.avg_ms else None

    @property
    def queued(self) -> float | None:
        return max(0.0, self.in_system - self.pods) if self.in_system is not None else None

    @property
    def timeout_bound(self) -> float | None:
        """Users a closed loop can hold before the slowest answers pass the timeout."""
        if not self.saturation_rps:
            return None
        return self.saturation_rps.mean * (TIMEOUT_SHARE_HELD * self.timeout_s + self.wait_s)

    @property
    def bound_ratio(self) -> float | None:
        return self.max_users.mean / self.timeout_bound if self.timeout_bound else None

    @property
    def needed_mbit(self) -> float | None:
        """Bandwidth the client sends at the saturation throughput."""
        return (self.saturation_rps.mean * REQUEST_BYTES * BITS_PER_BYTE / BITS_PER_MBIT
                if self.saturation_rps else None)

    @property
    def worst_balance(self) -> Balance | None:
        spread = [b for b in self.balances if b.busiest_over_mean is not None]
        return max(spread, key=lambda b: b.busiest_over_mean or 0.0) if spread else None


@dataclass(frozen=True)
class Comparison:
    """The same pod count measured from both client locations."""

    pods: int
    master: Point
    remote: Point

    @property
    def users_ratio(self) -> float | None:
        return self.remote.max_users.mean / self.master.max_users.mean if self.master.max_users.mean else None

    @property
    def within_noise(self) -> bool:
        """The locations' max users differ by no more than their repeats' standard deviations together."""
        return _overlap(self.master.max_users, self.remote.max_users)

    @property
    def rps_within_noise(self) -> bool:
        m, r = self.master.saturation_rps, self.remote.saturation_rps
        return m is not None and r is not None and _overlap(m, r)

    @property
    def rps_ratio(self) -> float | None:
        m, r = self.master.saturation_rps, self.remote.saturation_rps
        return r.mean / m.mean if m and r and m.mean else None


class FaultFileError(ValueError):
    """A file given as a fault result is not one."""


def _overlap(a: Spread, b: Spread) -> bool:
    return abs(a.mean - b.mean) <= a.std + b.std


@dataclass(frozen=True)
class Fault:
    """What users saw during one fault under load (``clouddetect lab faults`` JSON); absent fields are None."""

    fault: str
    replicas: int | None
    users: int | None
    requests: int
    failed: int
    failures_by_kind: dict[str, int]
    first_failure_s: float | None
    last_failure_s: float | None
    capacity_back_s: float | None
    rps_before: float | None
    pod: str | None
    node: str | None
    pods_on_node: int | None
    endpoints_off_s: float | None

    @classmethod
    def load(cls, path: Path) -> Fault:
        try:
            data = json.loads(path.read_text())
            return cls._from(data, path)
        except (ValueError, TypeError, AttributeError) as exc:
            raise FaultFileError(f"{path} is not a `clouddetect lab faults` result ({exc})") from None

    @classmethod
    def _from(cls, data: dict[str, Any], path: Path) -> Fault:
        return cls(data.get("fault", path.stem), data.get("replicas"), (data.get("settings") or {}).get("users"),
                   int(data.get("requests", 0)), int(data.get("failed_requests", 0)),
                   dict(data.get("failures_by_kind") or {}), data.get("first_failure_s"), data.get("last_failure_s"),
                   data.get("capacity_back_s"), data.get("requests_per_s_before"), data.get("pod"), data.get("node"),
                   data.get("pods_on_node"), data.get("endpoints_off_lost_node_s"))


@dataclass(frozen=True)
class Facts:
    points: list[Point]
    links: dict[str, dict[str, Any] | None]  # client location -> the simulated link it ran behind (None: none)
    faults: list[Fault] = field(default_factory=list)
    # client location -> the load generator machine's 1-minute load average when its experiment started
    loads: dict[str, float] = field(default_factory=dict)
    # node -> its CPU model, instruction sets and the engines its pods ran, as the pods' /readyz said
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)

    def at(self, location: str) -> list[Point]:
        return [p for p in self.points if p.location == location]

    @property
    def locations(self) -> list[str]:
        return sorted({p.location for p in self.points})

    def missing_pods(self, location: str) -> list[int]:
        measured = {p.pods for p in self.at(location)}
        return [pods for pods in ASSIGNMENT_PODS if pods not in measured]

    @property
    def missing_locations(self) -> list[str]:
        return [location for location in CLIENT_LOCATIONS if location not in self.locations]

    @property
    def comparisons(self) -> list[Comparison]:
        by_key = {(p.location, p.pods): p for p in self.points}
        return [Comparison(pods, by_key[("master", pods)], by_key[("remote", pods)])
                for pods in sorted({p.pods for p in self.points})
                if ("master", pods) in by_key and ("remote", pods) in by_key]

    @property
    def balanced_points(self) -> list[Point]:
        return [p for p in self.points if p.pods > 1 and p.worst_balance is not None]

    @property
    def failure_kinds(self) -> dict[str, int]:
        """Failures that ended the searches (breaking points), by kind, over every run."""
        total: Counter[str] = Counter()
        for point in self.points:
            total.update(point.breaking_failures)
        return dict(total.most_common())

    @property
    def first_saturated(self) -> Point | None:
        return next((p for p in self.points if p.service_ms is not None), None)

    @property
    def timed_out(self) -> int:
        return self.failure_kinds.get("timeout", 0)

    @property
    def refused(self) -> int:
        return sum(count for kind, count in self.failure_kinds.items() if "503" in kind)

    @property
    def single_pod_requests(self) -> int:
        return sum(sum(b.answered.values()) for p in self.points if p.pods == 1 for b in p.balances)

    @property
    def most_queued(self) -> Point | None:
        queued = [p for p in self.points if p.queued is not None]
        return max(queued, key=lambda p: p.queued or 0.0) if queued else None

    @property
    def bound_thresholds(self) -> EvidenceSettings:
        """The thresholds the runs were flagged by, as recorded (the lab's defaults for runs that did not say)."""
        recorded = next((r.evidence["bound_thresholds"] for r in self.runs
                         if r.evidence and "bound_thresholds" in r.evidence), None)
        return EvidenceSettings(**recorded) if recorded else EvidenceSettings()

    @property
    def bound_points(self) -> list[Point]:
        return [p for p in self.points if p.evidence.bound]

    @property
    def quota_bound(self) -> list[Point]:
        """Configurations whose pods used their CPU quota at capacity: the service's own limit was reached."""
        return [p for p in self.points if not p.evidence.bound and p.evidence.cpu_used_share is not None]

    @property
    def timeouts(self) -> list[float]:
        return sorted({p.timeout_s for p in self.points})


def _point(location: str, pods: int, runs: list[RunRecord]) -> Point:
    failures: Counter[str] = Counter()
    for run in runs:
        failures.update(run.breaking_failure_kinds)
    max_users = spread_of([r.max_users for r in runs])
    assert max_users is not None  # every run has its max users
    return Point(
        location, pods, len(runs), max(r.timeout_s for r in runs), max(r.wait_s for r in runs), max_users,
        spread_of([r.avg_ms for r in runs]), spread_of([r.median_ms for r in runs]),
        spread_of([r.p95_ms for r in runs]), spread_of([r.p99_ms for r in runs]), spread_of([r.rps for r in runs]),
        spread_of([r.saturation_rps for r in runs]), spread_of([r.slo_users for r in runs]),
        next((r.slo_p95_s for r in runs if r.slo_p95_s), None), spread_of([r.breaking_users for r in runs]),
        dict(failures), [Balance(r.pods, r.pod_requests) for r in runs if r.pod_requests], evidence_of(runs),
    )


def with_efficiency(points: list[Point]) -> list[Point]:
    """Each point with its scaling efficiency: saturation throughput over 1 pod's (same location) times the pods.
    None where the client or the machine limited either: that ratio would not be the service's."""
    one = {p.location: p for p in points if p.pods == 1}
    result = []
    for p in points:
        unit = one.get(p.location)
        base = unit.saturation_rps if unit and not unit.evidence.bound and not p.evidence.bound else None
        efficiency = p.saturation_rps.mean / (p.pods * base.mean) if base and p.saturation_rps and base.mean else None
        result.append(Point(**{**p.__dict__, "efficiency": efficiency}))
    return result


def gather(experiments: Sequence[Experiment], fault_files: Sequence[Path] = ()) -> Facts:
    runs = [r for e in experiments for r in e.runs]
    grouped: dict[tuple[str, int], list[RunRecord]] = {}
    for run in runs:
        grouped.setdefault((run.client_location, run.pods), []).append(run)
    points = with_efficiency([_point(loc, pods, group) for (loc, pods), group in sorted(grouped.items())])
    links = {r.client_location: e.conditions.get("client_link") for e in experiments for r in e.runs}
    loads = {r.client_location: load for e in experiments for r in e.runs
             if (load := (e.environment.get("load_generator") or {}).get("load_average_1m")) is not None}
    nodes: dict[str, dict[str, Any]] = {}
    for e in experiments:  # the same node seen by several experiments: its engines together
        for name, node in (e.environment.get("nodes") or {}).items():
            seen = nodes.setdefault(name, {**node, "engines": []})
            seen["engines"] += [engine for engine in node.get("engines") or [] if engine not in seen["engines"]]
    return Facts(points, links, [Fault.load(path) for path in fault_files], loads, nodes, runs)
