"""The search through its ``Measure`` seam: a service model that holds up to a known number of users.

``find_capacity`` only sees step outcomes, so these tests drive it with outcomes computed from a closed-loop model
(response time = users / throughput) and check which steps it asks for and what it concludes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from clouddetect.lab.capacity.locust_runs import StepOutcome
from clouddetect.lab.capacity.search import SearchSettings, Step, find_capacity, first_guess, step_down
from clouddetect.loadtest.settings import StepPlan

MAX_USERS = 3000
TIMEOUT_S = 30.0
SETTINGS = SearchSettings(spawn_rate=2.0, confirm_spawn_rate=1.0, hold_s=60.0, max_users=MAX_USERS,
                          step_down_pct=10.0, start_fraction=0.6, slo_p95_s=2.0, slo_hold_s=20.0)


def outcome(users: int, first_failure_users: int | None, held_s: float | None = None, *, sent: int = 100,
            judged: int = 100, avg_ms: float = 120.0, p95_ms: float = 200.0, start_users: int = 0,
            saturation_rps: float | None = None) -> StepOutcome:
    failures = 0 if first_failure_users is None else 5
    return StepOutcome(users, first_failure_users, users, held_s, judged, failures,
                       {"timeout": failures} if failures else {}, avg_ms, avg_ms, p95_ms, p95_ms * 1.1, 5.0, sent,
                       judged, start_users, saturation_rps)


@dataclass
class ClosedLoopService:
    """Holds up to ``capacity`` users at ``rps``; the ramp sees its first failure ``overshoot`` users later."""

    capacity: int
    rps: float = 5.0
    overshoot: int = 6
    p95_over_mean: float = 1.2
    floor_ms: float = 0.0
    search_rps: float | None = None  # what the search's ramp measured, when it differs
    asked: list[StepPlan] = field(default_factory=list)

    def measure(self, plan: StepPlan) -> Step:
        self.asked.append(plan)
        mean_ms = plan.users / self.rps * 1000
        if plan.name == "search":
            start = math.floor(self.rps * plan.start_fraction * TIMEOUT_S)
            return Step(outcome(plan.users, self.capacity + self.overshoot, start_users=start,
                                saturation_rps=self.search_rps or self.rps), {})
        failed = plan.users > self.capacity
        return Step(outcome(plan.users, plan.users if failed else None, plan.hold_s, avg_ms=mean_ms,
                            p95_ms=mean_ms * self.p95_over_mean + self.floor_ms), {"pod-a": 100})


def test_search_jumps_then_confirms_one_below_the_first_failure_ramping_its_last_step() -> None:
    service = ClosedLoopService(capacity=120)
    capacity = find_capacity(service.measure, SETTINGS, 0.0)
    search, confirm = service.asked[:2]
    assert search.start_fraction == SETTINGS.start_fraction and search.users == MAX_USERS
    assert confirm.users == 125 and confirm.spawn_rate == SETTINGS.confirm_spawn_rate
    assert confirm.start_users == 112  # quickly to one step-down (10 %) below, then 1 user/s
    assert confirm.hold_s == SETTINGS.hold_s
    assert capacity.breaking_users == 126


def test_a_failed_confirmation_steps_down_until_one_holds() -> None:
    service = ClosedLoopService(capacity=100)
    capacity = find_capacity(service.measure, SETTINGS, 0.0)
    assert [s.outcome.users for s in capacity.confirmations] == [105, 94]
    assert capacity.max_users == 94 and capacity.accepted is capacity.confirmations[-1]


def test_the_users_within_the_latency_objective_come_from_littles_law_and_step_down() -> None:
    service = ClosedLoopService(capacity=120)
    capacity = find_capacity(service.measure, SETTINGS, 0.0)
    slo_steps = [p for p in service.asked if p.name.startswith("slo-")]
    # 5 req/s x 2 s x (mean / p95 = 1 / 1.2) = 8 users, whose p95 is 8 / 5 x 1.2 = 1.92 s: within 2 s.
    assert [p.users for p in slo_steps] == [8]
    assert slo_steps[0].hold_s == SETTINGS.slo_hold_s
    assert capacity.slo_users == 8


def test_a_guess_over_the_objective_steps_down_until_within_it() -> None:
    # A fixed 0.5 s on top of the queue: at light load p95 / mean is wider than at capacity, so the guess is high.
    service = ClosedLoopService(capacity=120, floor_ms=500.0)
    capacity = find_capacity(service.measure, SETTINGS, 0.0)
    assert [s.outcome.users for s in capacity.slo_steps] == [8, 7, 6]
    assert capacity.slo_users == 6 and capacity.slo_held is capacity.slo_steps[-1]


def test_saturation_throughput_is_that_of_the_held_capacity() -> None:
    # The ramp measured 3 req/s (the machine was busier then); the held capacity served 5 req/s.
    service = ClosedLoopService(capacity=120, search_rps=3.0)
    capacity = find_capacity(service.measure, SETTINGS, 0.0)
    assert capacity.search.outcome.saturation_rps == 3.0
    assert capacity.saturation_rps == capacity.accepted.outcome.rps == 5.0
    assert capacity.slo_users == 8  # from 5 req/s, as above


def test_a_capacity_within_the_objective_needs_no_further_step() -> None:
    service = ClosedLoopService(capacity=5)
    capacity = find_capacity(service.measure, SETTINGS, 0.0)
    assert not capacity.slo_steps and capacity.slo_users == capacity.max_users == 5


def test_no_objective_no_slo_steps() -> None:
    service = ClosedLoopService(capacity=120)
    capacity = find_capacity(service.measure, SearchSettings(**{**SETTINGS.__dict__, "slo_p95_s": 0.0}), 0.0)
    assert not capacity.slo_steps and capacity.slo_users is None


def test_first_guess_is_one_below_the_users_at_the_first_failure() -> None:
    assert first_guess(outcome(MAX_USERS, 181), MAX_USERS) == 180


def test_a_ramp_that_never_failed_guesses_its_cap() -> None:
    assert first_guess(outcome(MAX_USERS, None, held_s=0.0), MAX_USERS) == MAX_USERS


def test_a_failure_while_holding_steps_down_by_the_share() -> None:
    assert step_down(outcome(200, 200), 10) == 180
    assert step_down(outcome(5, 5), 10) == 4  # at least one user


def test_a_failure_while_ramping_steps_below_where_it_failed() -> None:
    assert step_down(outcome(200, 150), 10) == 149


@pytest.mark.parametrize(("step", "passed"), [
    (outcome(10, None, held_s=3.0), True),
    (outcome(10, None, held_s=None), False),
    (outcome(10, 10, held_s=3.0), False),
    (outcome(10, None, held_s=3.0, sent=101, judged=100), False),  # a request never answered is no pass
])
def test_only_a_held_step_without_failures_whose_every_request_was_judged_passes(step: StepOutcome,
                                                                                  passed: bool) -> None:
    assert step.passed is passed
