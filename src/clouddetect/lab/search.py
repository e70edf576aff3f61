"""The breaking point of one configuration: ramp until the first failure, then confirm by holding the load.

The ramp overshoots (a request that times out was sent up to the timeout earlier, with fewer users), so its
answer is only a first guess: max = users at the first failure minus one. Each guess is confirmed by ramping
gently to it and holding it; a failed confirmation steps down (by a share of the users, or below the count at
which it failed, whichever is lower) and confirms again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from clouddetect.lab.load import StepOutcome


@dataclass(frozen=True)
class SearchSettings:
    spawn_rate: float
    confirm_spawn_rate: float
    hold_s: float
    max_users: int
    step_down_pct: float


@dataclass(frozen=True)
class Step:
    """A load step as measured: Locust's outcome and the requests each pod answered meanwhile."""

    outcome: StepOutcome
    pod_requests: dict[str, int]


# (step name, users, spawn rate, hold time) -> the measured step
Measure = Callable[[str, int, float, float], Step]


@dataclass
class Capacity:
    search: Step
    confirmations: list[Step] = field(default_factory=list)

    @property
    def breaking_users(self) -> int | None:
        """Users when the ramp saw its first failure; None when it reached the cap without one."""
        return self.search.outcome.first_failure_users

    @property
    def accepted(self) -> Step | None:
        last = self.confirmations[-1] if self.confirmations else None
        return last if last is not None and last.outcome.passed else None

    @property
    def max_users(self) -> int:
        return self.accepted.outcome.users if self.accepted else 0


def first_guess(search: StepOutcome, max_users: int) -> int:
    return max_users if search.first_failure_users is None else search.first_failure_users - 1


def step_down(failed: StepOutcome, step_down_pct: float) -> int:
    lower = failed.users - max(1, math.ceil(failed.users * step_down_pct / 100))
    if failed.first_failure_users is not None:
        lower = min(lower, failed.first_failure_users - 1)
    return lower


def find_capacity(measure: Measure, settings: SearchSettings) -> Capacity:
    capacity = Capacity(measure("search", settings.max_users, settings.spawn_rate, 0.0))
    users = first_guess(capacity.search.outcome, settings.max_users)
    while users >= 1:
        step = measure(f"confirm-{len(capacity.confirmations) + 1}", users, settings.confirm_spawn_rate,
                       settings.hold_s)
        capacity.confirmations.append(step)
        if step.outcome.passed:
            break
        users = step_down(step.outcome, settings.step_down_pct)
    return capacity
