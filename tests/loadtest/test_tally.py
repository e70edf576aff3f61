"""Requests sent and judged, counted by the users; a distributed master adds up its workers' counts."""

from __future__ import annotations

import time

from clouddetect.loadtest.tally import Tally, combined


def sent_at(*times: float) -> Tally:
    """A tally whose requests were sent at these wall-clock times, none judged yet."""
    return Tally(sent=len(times), in_flight_sent_at=list(times))


def test_a_request_in_flight_is_sent_but_not_judged() -> None:
    tally = Tally()
    first = tally.send()
    second = tally.send()
    tally.judge(first, failed=False)
    assert (tally.sent, tally.judged) == (2, 1)
    assert tally.in_flight_sent_at == [second]


def test_failures_remember_when_they_were_sent() -> None:
    tally = sent_at(10.0, 20.0, 30.0)
    tally.judge(30.0, failed=True)
    tally.judge(10.0, failed=False)
    tally.judge(20.0, failed=True)
    assert tally.first_failure_sent_at() == 20.0
    assert tally.first_failure_sent_at(excluding=(15.0, 25.0)) == 30.0
    assert tally.first_failure_sent_at(excluding=(0.0, 31.0)) is None
    assert tally.first_failure_sent_at(excluding=(25.0, 30.0)) == 20.0  # the end is not within
    assert [tally.failures_sent_within(w) for w in ((0.0, 20.0), (0.0, 25.0), (20.0, 30.0), (0.0, 31.0))] == [
        0, 1, 1, 2]


def test_requests_sent_before_a_moment_are_judged_once_none_of_them_is_in_flight() -> None:
    tally = sent_at(10.0, 12.0, 20.0)
    tally.judge(12.0, failed=True)
    assert not tally.judged_all_sent_before(15.0)  # the one sent at 10 still waits
    tally.judge(10.0, failed=False)
    assert tally.judged_all_sent_before(15.0)
    assert not tally.judged_all_sent_before(25.0)  # the one sent at 20 waits, and was sent before 25


def test_workers_reports_add_up_and_say_when_they_left() -> None:
    before = time.time()
    reports = [Tally(5, 4, [12.0], [14.0]).as_report(), Tally(3, 3, [11.0, 15.0]).as_report()]
    received = [Tally(**report) for report in reports]
    assert all(t.reported_at >= before for t in received)
    total = combined(received)
    assert (total.sent, total.judged) == (8, 7)
    assert total.first_failure_sent_at() == 11.0
    assert total.failures_sent_within((0.0, 13.0)) == 2
    assert not total.judged_all_sent_before(15.0)
