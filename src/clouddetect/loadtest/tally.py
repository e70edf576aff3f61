"""Requests sent and requests judged, counted by the users themselves, so that their equality is checked.

Locust's statistics count a request only once it is judged: one still in flight when its user is stopped appears
nowhere. Each process counts its own; a distributed master keeps every worker's latest (cumulative) count.
Kept free of Locust so the lab's arithmetic can be tested without it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

# The key under which a worker's tally travels in its statistics report to the master.
REPORT_KEY = "clouddetect_tally"


# Wall-clock times (start, end): a request sent at or after start and before end was sent within it.
Window = tuple[float, float]


def _within(sent_at: float, window: Window | None) -> bool:
    return window is not None and window[0] <= sent_at < window[1]


@dataclass
class Tally:
    sent: int = 0
    judged: int = 0
    # Wall-clock times at which failed requests were sent (the lab maps them to the users of that moment).
    failures_sent_at: list[float] = field(default_factory=list)
    # Wall-clock times at which the requests not yet judged were sent.
    in_flight_sent_at: list[float] = field(default_factory=list)
    # When a worker's report left it: a master judges only by reports newer than what it asks about.
    reported_at: float = 0.0

    def send(self) -> float:
        self.sent += 1
        sent_at = time.time()
        self.in_flight_sent_at.append(sent_at)
        return sent_at

    def judge(self, sent_at: float, failed: bool) -> None:
        self.in_flight_sent_at.remove(sent_at)
        self.judged += 1
        if failed:
            self.failures_sent_at.append(sent_at)

    def first_failure_sent_at(self, excluding: Window | None = None) -> float | None:
        """When the earliest failed request was sent, leaving out those sent within ``excluding``."""
        return min((t for t in self.failures_sent_at if not _within(t, excluding)), default=None)

    def failures_sent_within(self, window: Window) -> int:
        return sum(1 for t in self.failures_sent_at if _within(t, window))

    def judged_all_sent_before(self, moment: float) -> bool:
        """Whether no request sent before ``moment`` is still waiting for its answer (or its timeout)."""
        return all(t >= moment for t in self.in_flight_sent_at)

    def as_report(self) -> dict[str, Any]:
        return {**asdict(self), "reported_at": time.time()}


def combined(tallies: list[Tally]) -> Tally:
    return Tally(sum(t.sent for t in tallies), sum(t.judged for t in tallies),
                 [sent_at for t in tallies for sent_at in t.failures_sent_at],
                 [sent_at for t in tallies for sent_at in t.in_flight_sent_at])


# This process's users count here; on a distributed master, each worker's latest report is kept by its id.
LOCAL = Tally()
WORKERS: dict[str, Tally] = {}
