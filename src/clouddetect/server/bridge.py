"""The WSGI app bridged from ASGI: the body read on the loop within its deadline and byte bound, then the answer
made on a request thread and sent by the loop, saying whether the connection stays open."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from flask import Flask

from clouddetect.admission import DEADLINE_ENVIRON_KEY, GONE_ENVIRON_KEY, Admission
from clouddetect.config import Settings
from clouddetect.errors import REFUSAL_ENVIRON_KEY, ClientError, Overloaded, RequestTimeout
from clouddetect.metrics import Metrics
from clouddetect.server.connections import Stopping, WSGIWrapper, build_environ, current_connection
from clouddetect.verdicts import ENDPOINT, TIMEOUT_HEADER

log = logging.getLogger("clouddetect.server")
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def _client(scope: dict[str, Any]) -> str:
    host, port = scope.get("client") or ("-", 0)
    return f"{host}:{port}"


def _body_length(scope: dict[str, Any]) -> int | None:
    """The body's announced length (0 without one), or None for a chunked body, which is never read."""
    headers = dict(scope["headers"])  # h11 has merged or refused repeated framing headers
    if b"transfer-encoding" in headers:
        return None
    return int(headers.get(b"content-length", 0))


class BufferedWSGI(WSGIWrapper):  # type: ignore[misc]  # hypercorn's wrappers are untyped at this level
    """hypercorn's WSGI bridge with the body's arrival bounded in time and in bytes held.

    The whole body is read on the loop first, then the app runs on a request thread. A body too slow is refused
    with 408; past ``max_receiving_body_bytes`` of bodies arriving at once, a body is read to its end but not kept,
    and refused with 503, so its connection stays usable. The refusal is handed to the app in the environ, which
    answers, logs and counts it like any other. A body left unread (too slow, over ``max_body_bytes``, chunked)
    closes the connection after the answer, and the answer says so. So does an answer sent while the worker stops
    (see ``Stopping``): a keep-alive client then sends its next request elsewhere instead of onto a closing socket.
    """

    def __init__(self, app: Flask, settings: Settings, stopping: Stopping) -> None:
        super().__init__(app, settings.max_body_bytes)
        self.settings = settings
        self.stopping = stopping
        self.receiving_bytes = 0
        pipeline = app.extensions["clouddetect"]
        self.admission: Admission = pipeline.admission
        self.metrics: Metrics = pipeline.metrics
        self.refusals = RefusalSummary()
        self.pacer = Pacer(settings.max_refusals_per_s)

    async def handle_http(self, scope: dict[str, Any], receive: Receive, send: ASGISend,
                          sync_spawn: Callable[..., Awaitable[Any]], _call_soon: Callable[..., Any]) -> None:
        length = _body_length(scope)
        detection = scope["method"] == "POST" and scope["path"] == ENDPOINT and length is not None
        if detection:
            allowed_s = self.admission.wait_allowed_s(_header(scope, TIMEOUT_HEADER))
            deadline = time.monotonic() + allowed_s
            refusal = self.admission.refusal_by_time(allowed_s)
            if refusal is not None:
                await self._refuse(scope, receive, send, length, refusal, deadline)
                return
        await self._serve(scope, receive, send, sync_spawn, length, deadline if detection else None)

    async def _serve(self, scope: dict[str, Any], receive: Receive, send: ASGISend,
                     sync_spawn: Callable[..., Awaitable[Any]], length: int | None, deadline: float | None) -> None:
        """Read the body, answer on a request thread, send; ``deadline``: a detection request's.

        A detection request counts among those let in (``Admission.admitted``) once its body has arrived: one
        still arriving holds no place (a trickling client cannot take them), and requests that arrived together
        are admitted one by one here, the later ones refused as on arrival, but with their connection kept."""
        body, complete, refusal = b"", False, None
        if length is not None and length <= self.settings.max_body_bytes:
            try:
                body, complete, refusal = await self._receive_body(scope, receive, length)
            except ConnectionError:
                return  # the client left before its body arrived: nobody to answer
        if deadline is not None and refusal is None and complete:
            late = self.admission.refusal_by_time(deadline - time.monotonic())
            if late is not None:
                del body  # not held while the refusal waits its turn
                await self._refuse_read(scope, send, late, deadline)
                return
        environ = build_environ(scope, body)
        environ["wsgi.input"] = ReadOnce(body)
        del body
        if refusal is not None:
            environ[REFUSAL_ENVIRON_KEY] = refusal
        watcher = None
        if deadline is not None:
            environ[DEADLINE_ENVIRON_KEY] = deadline
            environ[GONE_ENVIRON_KEY] = gone = threading.Event()
            watcher = asyncio.ensure_future(_watch_disconnect(receive, gone)) if complete else None
        # hypercorn queues what arrives for the app and waits when the queue is full, even to say the answer is
        # sent: what is left of an unread body is taken off the queue and dropped until the connection closes.
        rest = None if complete else asyncio.ensure_future(_discard(receive))
        admitted = self.admission.admitted() if deadline is not None and refusal is None else contextlib.nullcontext()
        try:
            with admitted:  # until the answer is made; sending it is no work ahead of others
                status, headers, content = await sync_spawn(self._answer, environ)
            await self._send(scope, send, complete, status, headers, content)
        finally:
            for task in (rest, watcher):
                if task is not None:
                    task.cancel()

    async def _send(self, scope: dict[str, Any], send: ASGISend, complete: bool, status: int,
                    headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        # HTTP/1.0 and HTTP/2 connections are not kept by these headers (h2 drops them).
        with self.stopping.answer(keep_alive=complete and scope["http_version"] == "1.1") as keep:
            if not keep:
                headers.append((b"connection", b"close"))
            # hypercorn decides whether to keep the connection when the last of the answer is sent.
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content, "more_body": False})

    async def _refuse(self, scope: dict[str, Any], receive: Receive, send: ASGISend, length: int,
                      refusal: ClientError, deadline: float) -> None:
        """Answer a detection request refused on arrival from the loop itself, before its body is read: no request
        thread, no Flask, no log line of its own (``RefusalSummary``), at most ``max_refusals_per_s`` (``Pacer``).

        What is left of its body is read and dropped by the connection unparsed (``Connection.drop_input``), which
        costs a fraction of parsing it, and the answer says ``Connection: close``: the client reads its 503 and
        closes, and the connection closes after it, so no reset can destroy the answer before the client reads it.
        """
        connection = current_connection.get(None)
        # HTTP/2 multiplexes streams on one connection: only an HTTP/1 connection's input is dropped whole.
        if connection is not None and scope["http_version"] in ("1.0", "1.1"):
            connection.drop_input(self._body_allowed_s(length) + self.settings.max_queue_wait_s)
        queued = asyncio.ensure_future(_discard(receive))  # the part of the body parsed before: let go of it now
        try:
            await self.pacer.turn(deadline)
        finally:
            queued.cancel()
        self.metrics.refused.labels(refusal.code).inc()
        await self._send_refusal(scope, send, refusal, keep_alive=False)

    async def _refuse_read(self, scope: dict[str, Any], send: ASGISend, refusal: ClientError,
                           deadline: float) -> None:
        """Answer a detection request refused once its body has arrived (it came in a burst with others, which
        went ahead of it), paced as refusals on arrival are; its connection stays open for the next request."""
        await self.pacer.turn(deadline)
        await self._send_refusal(scope, send, refusal, keep_alive=True)

    async def _send_refusal(self, scope: dict[str, Any], send: ASGISend, refusal: ClientError,
                            keep_alive: bool) -> None:
        content = json.dumps({"error": {"code": refusal.code, "message": refusal.message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                   (b"retry-after", str(self.settings.retry_after_s).encode())]
        self.metrics.requests.labels(str(refusal.status)).inc()
        self.refusals.note(refusal.code)
        await self._send(scope, send, keep_alive, refusal.status, headers, content)

    def _body_allowed_s(self, length: int) -> float:
        """How long a body of ``length`` bytes may take to arrive."""
        return min(self.settings.body_timeout_s,
                   self.settings.header_timeout_s + length / self.settings.min_body_rate_bytes_per_s)

    def _answer(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The app's whole answer, made on a request thread; the loop sends it in one piece afterwards, so the
        thread never waits on the loop (the answers are small JSON documents and page files)."""
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], _exc_info: object = None) -> None:
            started["status"] = int(status.split(" ", 1)[0])
            started["headers"] = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]

        body = self.app(environ, start_response)
        try:
            content = b"".join(body)
        finally:
            if hasattr(body, "close"):
                body.close()
        return started["status"], started["headers"], content

    async def _receive_body(self, scope: dict[str, Any], receive: Receive,
                            length: int) -> tuple[bytes, bool, ClientError | None]:
        """The body, whether it arrived whole, and why the request is refused (None when it is not)."""
        allowed_s = self._body_allowed_s(length)
        chunks: list[bytes] = []
        held = received = 0
        refusal: ClientError | None = None
        try:
            async with asyncio.timeout(allowed_s):
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ConnectionError("the client closed the connection")
                    chunk, more = message.get("body", b""), message.get("more_body", False)
                    received += len(chunk)
                    if refusal is None and self.receiving_bytes + len(chunk) > self.settings.max_receiving_body_bytes:
                        refusal = Overloaded(f"{self.receiving_bytes} bytes of request bodies are arriving already; "
                                             "retry shortly")
                        chunks.clear()
                        self.receiving_bytes -= held
                        held = 0
                    if refusal is None:
                        chunks.append(chunk)
                        held += len(chunk)
                        self.receiving_bytes += len(chunk)
        except TimeoutError:
            log.warning("client %s too slow: %d of %d body bytes in %.1f s; answered 408",
                        _client(scope), received, length, allowed_s)
            return b"", False, RequestTimeout(f"the body did not arrive within {allowed_s:.1f} s; send it faster")
        finally:
            self.receiving_bytes -= held
        return b"".join(chunks), True, refusal


class ReadOnce(io.BytesIO):
    """A request body that lets go of its bytes once read to the end, so a request waiting for inference holds
    only its prepared image, not also its ~220 KB body."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.length = len(body)

    def readinto(self, buffer: Any) -> int:
        count = super().readinto(buffer)
        self._let_go_at_end()
        return count

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._let_go_at_end()
        return data

    def _let_go_at_end(self) -> None:
        if self.tell() >= self.length:
            self.truncate(0)


async def _discard(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _watch_disconnect(receive: Receive, gone: threading.Event) -> None:
    """Tells the request thread its client left: after the whole body only a disconnect can arrive."""
    await _discard(receive)
    gone.set()


def _header(scope: dict[str, Any], name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == wanted), None)


class RefusalSummary:
    """Refusals on arrival counted by reason and logged as one line per ``refusal_log_interval_s`` (``report``):
    under overload there are hundreds a second, and a line each would cost more than the refusal itself."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.since = time.monotonic()

    def note(self, reason: str) -> None:
        self.counts[reason] += 1

    async def report(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        if self.counts:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.counts.items()))
            log.info("refused on arrival: %d requests in the last %.0f s (%s)", self.counts.total(), now - self.since,
                     reasons)
            self.counts.clear()
        self.since = now


class Pacer:
    """Turns of at most ``per_s`` a second, first come first served, each given at its deadline at the latest.

    A refusal costs the loop ~1 ms of CPU, and a client refused at once comes straight back: hundreds of clients
    doing so would spend the pod's CPU on refusing. Waiting for a turn costs nothing, so refusing keeps to a small,
    fixed share of the CPU however many clients retry, and a refused client learns it no later than its deadline.
    """

    def __init__(self, per_s: float) -> None:
        self.interval_s = 1.0 / per_s
        self.next_turn = 0.0  # time.monotonic() seconds

    async def turn(self, deadline: float) -> None:
        """Returns at this caller's turn, or at its deadline when that comes first (the turn then stays free)."""
        now = time.monotonic()
        at = max(now, self.next_turn)
        if at > deadline:
            await asyncio.sleep(max(0.0, deadline - now))
            return
        self.next_turn = at + self.interval_s
        await asyncio.sleep(at - now)
