"""Requests sent and judged, counted by the users; a distributed master adds up its workers' counts."""

from __future__ import annotations

from clouddetect.loadtest.tally import Tally, combined


def test_a_request_in_flight_is_sent_but_not_judged() -> None:
    tally = Tally()
    first = tally.send()
    tally.send()
    tally.judge(first, failed=False)
    assert (tally.sent, tally.judged) == (2, 1)


def test_failures_remember_when_they_were_sent() -> None:
    tally = Tally()
    tally.judge(30.0, failed=True)
    tally.judge(10.0, failed=False)
    tally.judge(20.0, failed=True)
    assert tally.first_failure_sent_at() == 20.0
    assert tally.first_failure_sent_at(since=25.0) == 30.0
    assert tally.first_failure_sent_at(since=31.0) is None


def test_workers_reports_add_up() -> None:
    reports = [Tally(5, 4, [12.0]).as_report(), Tally(3, 3, [11.0, 15.0]).as_report()]
    total = combined([Tally(**report) for report in reports])
    assert (total.sent, total.judged) == (8, 7)
    assert total.first_failure_sent_at() == 11.0
