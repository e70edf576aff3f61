"""What a load step's figures say while it runs: is the service saturated, is the held response time stable.

Pure arithmetic on samples of Locust's running totals, kept free of Locust so it is tested on its own. The load
shape (``shape.py``) feeds it one sample per second.

- **Saturation.** Users that never pause form a closed loop: while the service has idle capacity each user adds
  its own rate of requests; once saturated, throughput stays flat and each user's share falls. The probe calls
  the service saturated when the requests/s per user of a window is at most ``SATURATED_SHARE`` of the best
  window's, i.e. there are at least twice the users the service can keep busy. A failed request (a timeout, an
  overload answer) also says the service had no idle capacity: then its best window is taken.
- **Stability.** The hold is split into windows; it is stable when every window's mean response time is within
  the tolerance of their common mean and the least-squares trend across them rises by less than the tolerance.
"""

from __future__ import annotations

import statistics
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

SATURATED_SHARE = 0.5
MIN_STABILITY_WINDOWS = 2


@dataclass(frozen=True)
class Sample:
    """Running totals at one moment of a step (``t_s`` from its start)."""

    t_s: float
    users: int
    requests: int
    total_ms: float


def window_means(samples: list[Sample], start_s: float, end_s: float, count: int) -> list[float | None]:
    """Mean response time of the requests judged in each of ``count`` equal windows of [start_s, end_s]."""
    if not samples or count < 1:
        return []
    times = [s.t_s for s in samples]
    edges = [start_s + (end_s - start_s) * i / count for i in range(count + 1)]
    at = [samples[max(0, bisect_right(times, edge) - 1)] for edge in edges]
    means: list[float | None] = []
    for first, last in zip(at, at[1:], strict=False):
        judged = last.requests - first.requests
        means.append((last.total_ms - first.total_ms) / judged if judged > 0 else None)
    return means


def is_stable(means: list[float | None], tolerance_pct: float) -> bool | None:
    """Whether the windows agree and do not trend upwards; None when too few windows have answers to tell."""
    known = [m for m in means if m is not None]
    if len(known) < MIN_STABILITY_WINDOWS:
        return None
    centre = statistics.fmean(known)
    allowed = centre * tolerance_pct / 100
    if any(abs(m - centre) > allowed for m in known):
        return False
    slope = statistics.linear_regression(range(len(known)), known).slope
    return slope * (len(known) - 1) <= allowed


@dataclass
class SaturationProbe:
    """Throughput per window while users are added; ``rps`` is the saturation throughput once ``saturated``."""

    window_s: float
    windows: list[tuple[float, float]] = field(default_factory=list)  # (requests/s, requests/s per user)
    saturated_from: int | None = None
    overloaded: bool = False  # a request failed: the service was past saturation
    _last: Sample | None = None

    def add(self, sample: Sample) -> None:
        if self._last is None:
            self._last = sample
            return
        seconds = sample.t_s - self._last.t_s
        if seconds < self.window_s:
            return
        rps = (sample.requests - self._last.requests) / seconds
        users = (sample.users + self._last.users) / 2
        self._last = sample
        if users <= 0:
            return
        self.windows.append((rps, rps / users))
        best_share = max(share for _, share in self.windows)
        if self.saturated_from is None and len(self.windows) > 1 and rps / users <= SATURATED_SHARE * best_share:
            self.saturated_from = len(self.windows) - 1

    @property
    def saturated(self) -> bool:
        return self.saturated_from is not None

    @property
    def rps(self) -> float | None:
        """Mean requests/s of the windows since saturation, the throughput more users no longer raise."""
        if self.saturated_from is not None:
            return statistics.fmean(rps for rps, _ in self.windows[self.saturated_from:])
        if self.overloaded and self.windows:
            return max(rps for rps, _ in self.windows)
        return None


def users_at(history: list[tuple[float, int]], wall_s: float) -> int | None:
    """Users running when a request was sent at wall-clock time ``wall_s``, from (wall time, users) pairs.

    The service answers in about the order requests arrive, so a request's wait is set by the users running when
    it was sent: that is the load a failed request met, not the larger one when its timeout was seen. Users are
    counted once a second, while some are being added: the count at the next second bounds it.
    """
    if not history or wall_s < history[0][0]:
        return None
    index = min(bisect_left([t for t, _ in history], wall_s), len(history) - 1)
    return history[index][1]
