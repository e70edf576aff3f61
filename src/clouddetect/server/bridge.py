"""The WSGI app bridged from ASGI: the body read on the loop within its deadline and byte bound, then the answer
made on a request thread and sent by the loop, saying whether the connection stays open."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from flask import Flask

from clouddetect.config import Settings
from clouddetect.errors import REFUSAL_ENVIRON_KEY, ClientError, Overloaded, RequestTimeout
from clouddetect.server.connections import Stopping, WSGIWrapper, build_environ

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

    async def handle_http(self, scope: dict[str, Any], receive: Receive, send: ASGISend,
                          sync_spawn: Callable[..., Awaitable[Any]], _call_soon: Callable[..., Any]) -> None:
        length = _body_length(scope)
        body, complete, refusal = b"", False, None
        if length is not None and length <= self.settings.max_body_bytes:
            try:
                body, complete, refusal = await self._receive_body(scope, receive, length)
            except ConnectionError:
                return  # the client left before its body arrived: nobody to answer
        environ = build_environ(scope, body)
        environ["wsgi.input"] = ReadOnce(body)
        del body
        if refusal is not None:
            environ[REFUSAL_ENVIRON_KEY] = refusal
        # hypercorn queues what arrives for the app and waits when the queue is full, even to say the answer is
        # sent: what is left of an unread body is taken off the queue and dropped until the connection closes.
        rest = None if complete else asyncio.ensure_future(_discard(receive))
        try:
            status, headers, content = await sync_spawn(self._answer, environ)
            # HTTP/1.0 and HTTP/2 connections are not kept by these headers (h2 drops them).
            with self.stopping.answer(keep_alive=complete and scope["http_version"] == "1.1") as keep:
                if not keep:
                    headers.append((b"connection", b"close"))
                # hypercorn decides whether to keep the connection when the last of the answer is sent.
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": content, "more_body": False})
        finally:
            if rest is not None:
                rest.cancel()

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
        allowed_s = min(self.settings.body_timeout_s,
                        self.settings.header_timeout_s + length / self.settings.min_body_rate_bytes_per_s)
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
