"""The search's arithmetic: the first guess from the ramp, and how far a failed confirmation steps down."""

from __future__ import annotations

from clouddetect.lab.load import StepOutcome
from clouddetect.lab.search import first_guess, step_down

MAX_USERS = 3000


def outcome(users: int, first_failure_users: int | None, held_s: float | None = None) -> StepOutcome:
    failures = 0 if first_failure_users is None else 5
    return StepOutcome(users, first_failure_users, users, held_s, 100, failures, {"HTTP 503": failures} if failures
                       else {}, 120.0, 110.0, 200.0, 8.0)


def test_first_guess_is_one_below_the_users_at_the_first_failure() -> None:
    assert first_guess(outcome(MAX_USERS, 181), MAX_USERS) == 180


def test_a_ramp_that_never_failed_guesses_its_cap() -> None:
    assert first_guess(outcome(MAX_USERS, None, held_s=0.0), MAX_USERS) == MAX_USERS


def test_a_failure_while_holding_steps_down_by_the_share() -> None:
    assert step_down(outcome(200, 200), 10) == 180
    assert step_down(outcome(5, 5), 10) == 4  # at least one user


def test_a_failure_while_ramping_steps_below_where_it_failed() -> None:
    assert step_down(outcome(200, 150), 10) == 149


def test_only_a_held_step_without_failures_passes() -> None:
    assert outcome(10, None, held_s=3.0).passed
    assert not outcome(10, None, held_s=None).passed
    assert not outcome(10, 10, held_s=3.0).passed
