"""The breaking point of one configuration: ramp until the first failure, then confirm by holding the load.

The search ramp first measures the saturation throughput, then jumps to a share of throughput x timeout (users
without think time fail near 0.75 x throughput x timeout) and ramps on from there until the first failed request.
Max users = the users when that request was sent, minus one: the first guess. Each guess is confirmed by reaching
it (quickly up to one step-down below it, then at the confirm spawn rate) and holding it until its response times
are stable; a failed confirmation steps down (by a share of the users, or below the count at which it failed,
whichever is lower) and confirms again.

Then, with a latency objective set, the users that keep the p95 response time within it are found the same way:
the guess comes from Little's law (users = throughput x (response time + think time)) and is held.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clouddetect.lab.capacity.locust_runs import StepOutcome
from clouddetect.loadtest.settings import StepPlan
from clouddetect.settings_fields import setting


@dataclass(frozen=True)
class SearchSettings:
    """How the breaking point is searched and confirmed; the same for every run of an experiment."""

    spawn_rate: float = setting(2.0, "Users started per second while searching for the breaking point.",
                                low=0, low_open=True)
    confirm_spawn_rate: float = setting(1.0, "Users started per second when confirming a user count.",
                                        low=0, low_open=True)
    hold_s: float = setting(60.0, "Time a confirmed user count must run without a failure, its response times stable.",
                            low=0)
    max_users: int = setting(3000, "Where the search stops if nothing has failed yet.", low=1)
    step_down_pct: float = setting(10.0, "Share of users dropped after a failed confirmation.", low=0, high=100,
                                   low_open=True)
    start_fraction: float = setting(
        0.6, "Once saturated, the search jumps to this share of throughput x timeout (0: ramp all the way).",
        low=0, high=1)
    slo_p95_s: float = setting(
        2.0, "Latency objective: also find the most users held with a p95 response time within it (0: skip).", low=0)
    slo_hold_s: float = setting(20.0, "Time the users within the latency objective are held.", low=0)


@dataclass(frozen=True)
class Step:
    """A load step as measured: Locust's outcome, the requests each pod answered meanwhile and, for a step that
    held its load, what bound it over the hold (see ``evidence``)."""

    outcome: StepOutcome
    pod_requests: dict[str, int]
    evidence: dict[str, Any] | None = None


Measure = Callable[[StepPlan], Step]


@dataclass
class Capacity:
    search: Step
    confirmations: list[Step] = field(default_factory=list)
    slo_steps: list[Step] = field(default_factory=list)
    # The held step whose p95 met the latency objective (the capacity's own, or one of slo_steps); None if none did.
    slo_held: Step | None = None

    @property
    def steps(self) -> list[Step]:
        return [self.search, *self.confirmations, *self.slo_steps]

    @property
    def breaking_users(self) -> int | None:
        """Users when the first failed request of the ramp was sent; None when the ramp reached its cap without one."""
        return self.search.outcome.first_failure_users

    @property
    def accepted(self) -> Step | None:
        last = self.confirmations[-1] if self.confirmations else None
        return last if last is not None and last.outcome.passed else None

    @property
    def max_users(self) -> int:
        return self.accepted.outcome.users if self.accepted else 0

    @property
    def saturation_rps(self) -> float | None:
        """Requests/s of the held capacity (users at the breaking point are well past saturation: more of them only
        lengthen the response time), else the search's estimate from its ramp."""
        return self.accepted.outcome.rps if self.accepted else self.search.outcome.saturation_rps

    @property
    def slo_users(self) -> int | None:
        return self.slo_held.outcome.users if self.slo_held else None


def first_guess(search: StepOutcome, max_users: int) -> int:
    return max_users if search.first_failure_users is None else search.first_failure_users - 1


def step_down(failed: StepOutcome, step_down_pct: float) -> int:
    lower = failed.users - max(1, math.ceil(failed.users * step_down_pct / 100))
    if failed.first_failure_users is not None:
        lower = min(lower, failed.first_failure_users - 1)
    return lower


def quick_start(users: int, settings: SearchSettings) -> int:
    """Users a confirmation reaches quickly (the level a failure would step down to) before its gentle ramp.

    Users that never pause keep one request each in the service whatever their arrival, so a burst of them settles
    at once into the load a gentle ramp reaches; only the last step is ramped, to see where a failure starts.
    """
    if settings.start_fraction <= 0:
        return 0
    return max(0, users - max(1, math.ceil(users * settings.step_down_pct / 100)))


def slo_guess(held: StepOutcome, saturation_rps: float, slo_p95_s: float, wait_s: float, max_users: int) -> int:
    """Users whose p95 should just meet the objective: Little's law with the mean/p95 ratio of the held load."""
    assert held.avg_ms and held.p95_ms
    mean_s = slo_p95_s * held.avg_ms / held.p95_ms
    return max(1, min(max_users, math.floor(saturation_rps * (mean_s + wait_s))))


def within_slo(outcome: StepOutcome, slo_p95_s: float) -> bool:
    return outcome.passed and outcome.p95_ms is not None and outcome.p95_ms <= slo_p95_s * 1000


def find_capacity(measure: Measure, settings: SearchSettings, wait_s: float) -> Capacity:
    """``wait_s``: the users' think time (a load setting), which the latency objective's guess counts in."""
    search = measure(StepPlan("search", settings.max_users, settings.spawn_rate,
                              start_fraction=settings.start_fraction))
    capacity = Capacity(search)
    users = first_guess(search.outcome, settings.max_users)
    while users >= 1:
        step = measure(StepPlan(f"confirm-{len(capacity.confirmations) + 1}", users, settings.confirm_spawn_rate,
                                settings.hold_s, start_users=quick_start(users, settings)))
        capacity.confirmations.append(step)
        if step.outcome.passed:
            break
        users = step_down(step.outcome, settings.step_down_pct)
    if settings.slo_p95_s > 0 and capacity.accepted and capacity.saturation_rps:
        _find_slo_users(measure, settings, capacity, capacity.saturation_rps, wait_s)
    return capacity


def _find_slo_users(measure: Measure, settings: SearchSettings, capacity: Capacity, saturation_rps: float,
                    wait_s: float) -> None:
    assert capacity.accepted is not None
    held = capacity.accepted.outcome
    if within_slo(held, settings.slo_p95_s):  # the capacity itself meets the objective
        capacity.slo_held = capacity.accepted
        return
    users = slo_guess(held, saturation_rps, settings.slo_p95_s, wait_s, held.users)
    while users >= 1:
        step = measure(StepPlan(f"slo-{len(capacity.slo_steps) + 1}", users, settings.spawn_rate,
                                settings.slo_hold_s))
        capacity.slo_steps.append(step)
        if within_slo(step.outcome, settings.slo_p95_s):
            capacity.slo_held = step
            return
        users = step_down(step.outcome, settings.step_down_pct)
