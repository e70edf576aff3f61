"""A bound on the requests waiting for inference, so overload is answered at once instead of piling up.

Both the number of waiting requests and the bytes of their bodies are bounded: the second keeps memory within a
pod's limit however large the photos, since a waiting request holds its body until it is answered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from clouddetect.errors import Overloaded


class Admission:
    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._requests = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return self._requests

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
