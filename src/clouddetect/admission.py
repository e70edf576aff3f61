"""What a detection request may wait for, so overload is answered at once instead of piling up stale work.

Each request gets a deadline: what its client states in ``X-Request-Timeout`` (it may shorten the wait, never
lengthen it), else ``max_queue_wait_s``. A request is refused at once, before its body is read, when the work already
waiting (its count x the seconds one forward pass takes, learned as the service runs) would not be done within that
deadline; one admitted whose deadline passes while it waits is never run. As in Triton's queue policy (a default
timeout, rejection, a client's shorter override) and the SRE book's advice: work only for clients that still wait.

The number of waiting requests and the bytes of their bodies stay bounded too: those keep memory within a pod's
limit however large the photos, since a waiting request holds its image until it is answered.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from clouddetect.errors import Overloaded

# The server's bridge puts each detection request's deadline (time.monotonic() seconds) and a threading.Event set
# when its client disconnects into the WSGI environ under these keys.
DEADLINE_ENVIRON_KEY = "clouddetect.deadline"
GONE_ENVIRON_KEY = "clouddetect.client_gone"


class Admission:
    def __init__(self, max_requests: int, max_bytes: int, max_wait_s: float,
                 service_s: Callable[[], float | None] = lambda: None) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self.service_s = service_s  # seconds one image takes here, as the detector learns it; None before any
        self._requests = 0
        self._bytes = 0
        self._admitted = 0  # let in by the server's loop, from their body's arrival until they are answered
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return self._requests

    @property
    def queued(self) -> int:
        """Requests ahead of a new one: those the server's loop let in, or (without it) those in a slot."""
        return max(self._admitted, self._requests)

    def wait_allowed_s(self, stated: str | None) -> float:
        """The longest this request may wait: the client's ``X-Request-Timeout`` when it is a shorter positive
        number of seconds, else ``max_wait_s``."""
        try:
            seconds = float(stated) if stated is not None else math.inf
        except ValueError:
            seconds = math.inf
        return min(seconds, self.max_wait_s) if seconds > 0 else self.max_wait_s

    def expected_wait_s(self) -> float:
        """How long a request admitted now would wait for its forward pass to end (0 until one pass was timed)."""
        return (self.queued + 1) * (self.service_s() or 0.0)

    def refusal_by_time(self, allowed_s: float) -> Overloaded | None:
        """Why a request allowed ``allowed_s`` is refused before its body is read; None when it may come in."""
        if self.queued >= self.max_requests:
            return Overloaded(f"{self.queued} requests wait already for inference; retry shortly")
        expected_s = self.expected_wait_s()
        if expected_s <= allowed_s:
            return None
        return Overloaded(f"{self.queued} requests wait already (~{expected_s:.0f} s of work), more than this "
                          f"request's {allowed_s:g} s; retry shortly")

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a request let in by the server's loop, from when its body has arrived until it is answered: a
        burst of arrivals sees those before it, and the bodies waiting for a request thread stay within
        ``max_requests``."""
        with self._lock:
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1

    @contextmanager
    def slot(self, body_bytes: int) -> Iterator[None]:
        """Hold a place for one request of ``body_bytes``; raises ``Overloaded`` when none is left."""
        with self._lock:
            if self._requests >= self.max_requests or self._bytes + body_bytes > self.max_bytes:
                raise Overloaded(
                    f"{self._requests} requests ({self._bytes} bytes) already wait for inference; retry shortly"
                )
            self._requests += 1
            self._bytes += body_bytes
        try:
            yield
        finally:
            with self._lock:
                self._requests -= 1
                self._bytes -= body_bytes
