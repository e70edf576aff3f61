"""Saturation and stability read from running totals, as the load shape samples them once a second."""

from __future__ import annotations

import pytest

from clouddetect.loadtest.stability import Sample, SaturationProbe, is_stable, users_at, window_means


def steady(seconds: int, rps: float, mean_ms: float, users: int = 10) -> list[Sample]:
    return [Sample(t, users, round(rps * t), rps * t * mean_ms) for t in range(seconds + 1)]


def test_window_means_are_the_mean_response_time_of_the_requests_judged_in_each_window() -> None:
    samples = steady(20, 5.0, 800.0)
    assert window_means(samples, 0, 20, 4) == pytest.approx([800.0] * 4)
    slower = samples + [Sample(20 + t, 10, 100 + 5 * t, samples[-1].total_ms + 5 * t * 1600) for t in range(1, 21)]
    assert window_means(slower, 0, 40, 4) == pytest.approx([800.0, 800.0, 1600.0, 1600.0])


def test_a_window_without_answers_has_no_mean() -> None:
    samples = [Sample(0, 1, 0, 0.0), Sample(5, 1, 0, 0.0), Sample(10, 1, 4, 4000.0)]
    assert window_means(samples, 0, 10, 2) == [None, pytest.approx(1000.0)]


@pytest.mark.parametrize(("means", "stable"), [
    ([1000, 1040, 980, 1010], True),
    ([1000, 1050, 1100, 1150], False),   # each within 10 % of the mean, but rising 15 %
    ([1000, 1000, 1000, 1400], False),   # one window far off
    ([1100, 1050, 1000, 950], True),     # falling is settling, not degrading
    ([1000, None, None, None], None),    # too few windows with answers to tell
])
def test_stable_means_agree_within_the_tolerance_and_do_not_trend_upwards(means: list[float | None],
                                                                          stable: bool | None) -> None:
    assert is_stable(means, 10.0) is stable


def test_saturation_is_when_each_users_share_of_throughput_has_halved() -> None:
    probe = SaturationProbe(window_s=5.0)
    requests = 0
    for t in range(0, 31):
        users = 2 * t
        rps = min(5.0, users * 5.0)  # a user alone gets 5 req/s (200 ms answers); the service gives 5 in all
        requests += round(rps)
        probe.add(Sample(float(t), users, requests, 0.0))
        if t == 5:
            assert not probe.saturated
    assert probe.saturated
    assert probe.rps == pytest.approx(5.0, rel=0.05)


def test_a_service_that_keeps_up_is_not_saturated() -> None:
    probe = SaturationProbe(window_s=5.0)
    requests = 0
    for t in range(0, 31):
        requests += 2 * t  # every user adds a request a second
        probe.add(Sample(float(t), 2 * t, requests, 0.0))
    assert not probe.saturated and probe.rps is None


def test_the_load_a_failed_request_met_is_the_users_when_it_was_sent() -> None:
    history = [(100.0 + t, 10 + 2 * t) for t in range(31)]
    assert users_at(history, 100.0) == 10
    assert users_at(history, 120.5) == 52  # counted at the next second, while users are being added
    assert users_at(history, 140.5) == 70  # after the last count: the last one
    assert users_at(history, 50.0) is None  # before the step began


def test_a_failure_before_saturation_was_seen_takes_the_best_window() -> None:
    probe = SaturationProbe(window_s=1.0)
    for t, requests in enumerate([0, 4, 9, 13]):
        probe.add(Sample(float(t), t + 2, requests, 0.0))
    assert probe.rps is None
    probe.overloaded = True
    assert probe.rps == 5.0
