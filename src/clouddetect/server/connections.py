"""A connection's life in hypercorn: its config, its idle, header and send deadlines, its close at a worker's stop."""

# hypercorn offers no public hook for what the service needs, so its internals are used here and only here (the
# bridge and the worker loop take theirs from this module): a body read within a deadline before the WSGI app runs
# (WSGIWrapper.handle_http, _build_environ), an idle timer split into keep-alive and header deadlines
# (TCPServer._idle_timeout, _read_data, idle_task, and h11's trailing_data reached through the protocol), a bounded
# wait for a client to take an answer (TCPServer.protocol_send, send_lock, writer), the rest of a refused body read
# without parsing it (TCPServer.run, _read_data, reader, hypercorn's MAX_RECV), and a worker loop with its own
# executor and connection limit (TCPServer's constructor, WorkerContext and its terminated event). Tested with
# hypercorn 0.18 (pinned in pyproject.toml: hypercorn>=0.18,<0.19); check these names before widening the pin.

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from hypercorn.app_wrappers import WSGIWrapper as WSGIWrapper
from hypercorn.app_wrappers import _build_environ
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.asyncio.worker_context import EventWrapper
from hypercorn.asyncio.worker_context import WorkerContext as WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData

from clouddetect.config import Settings

log = logging.getLogger("clouddetect.server")
build_environ = _build_environ  # the WSGI environ of a request whose body the bridge has read itself
# The connection a request arrived on, seen by the app tasks hypercorn spawns from it (they inherit its context).
current_connection: contextvars.ContextVar[Connection] = contextvars.ContextVar("clouddetect_connection")


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.backlog = settings.listen_backlog
    config.keep_alive_timeout = settings.keepalive_s
    config.keep_alive_max_requests = settings.max_requests_per_connection
    config.graceful_timeout = settings.graceful_timeout_s
    config.h11_max_incomplete_size = settings.max_header_bytes
    config.include_server_header = True  # "Server: hypercorn-h11": clients and tests can tell the service answered
    config.accesslog = None  # the app logs one richer line per request
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def peer(writer: asyncio.StreamWriter) -> str:
    host, port, *_ = writer.get_extra_info("peername") or ("-", 0)
    return f"{host}:{port}"


class Stopping:
    """A worker stops in two steps, so that every answer tells the truth about its connection.

    First, answers begin to say ``Connection: close``. Then, once the HTTP/1.1 answers already being sent without
    it are out, hypercorn is told that the worker terminates: from then on it closes each connection after its
    current answer (and an HTTP/2 connection says GOAWAY). Told at once, it would also close the connections whose
    answer had just promised to keep them, and a back-to-back client's next request met a closing socket. The wait
    is bounded: an answer a client does not take holds the stop no longer than ``within_s``.
    """

    def __init__(self, terminated: EventWrapper) -> None:
        self.terminated = terminated
        self.begun = False
        self._keeping = 0  # answers being sent that keep their connection
        self._none_keeping = asyncio.Event()
        self._none_keeping.set()

    @contextlib.contextmanager
    def answer(self, keep_alive: bool) -> Iterator[bool]:
        """Whether the answer sent inside this block keeps its connection, where it could (``keep_alive``)."""
        keep = keep_alive and not self.begun
        if keep:
            self._keeping += 1
            self._none_keeping.clear()
        try:
            yield keep
        finally:
            if keep:
                self._keeping -= 1
                if not self._keeping:
                    self._none_keeping.set()

    async def begin(self, within_s: float) -> None:
        """Answers say ``Connection: close`` from now on; returns once hypercorn knows the worker terminates."""
        self.begun = True
        try:
            async with asyncio.timeout(within_s):
                await self._none_keeping.wait()
        except TimeoutError:
            log.warning("%d answers promising keep-alive still not sent after %.1f s; stopping all the same",
                        self._keeping, within_s)
        finally:
            await self.terminated.set()


class Connection(TCPServer):  # type: ignore[misc]
    """hypercorn's connection with its idle timer split in two: ``keepalive_s`` for a connection that sends
    nothing, ``header_timeout_s`` for one whose request's headers have begun but not ended.

    hypercorn runs the timer from the connection's opening (or previous answer) until a request's headers are
    complete, and stops it while the request is served. It also lets the timer run out after the client has
    closed its side, which would keep a place among ``max_connections``: here the timer stops then.
    """

    def __init__(self, *args: Any, header_timeout_s: float, send_timeout_s: float) -> None:
        super().__init__(*args)
        self.header_timeout_s = header_timeout_s
        self.send_timeout_s = send_timeout_s
        self.dropping_until: float | None = None  # loop time until which the input is read and dropped

    async def run(self) -> None:
        current_connection.set(self)
        await super().run()

    def drop_input(self, within_s: float) -> None:
        """Read whatever the client still sends and drop it unparsed, then close once it closes (or after
        ``within_s``): a refused request's body costs a few reads instead of h11's parsing, and the answer sent
        meanwhile, which says ``Connection: close``, is not lost to a reset from closing over unread bytes."""
        self.dropping_until = self.loop.time() + within_s

    async def protocol_send(self, event: Event) -> None:
        """hypercorn's, with the wait for the client to take an answer's bytes bounded by ``send_timeout_s``; a
        connection dropping its input closes when that ends (see ``_read_data``), not when the answer is sent."""
        if isinstance(event, Closed) and self.dropping_until is not None:
            return
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                self.writer.write(event.data)
                await asyncio.wait_for(self.writer.drain(), self.send_timeout_s)
            except TimeoutError:
                log.warning("client %s too slow: the answer was not taken within %.1f s; connection closed",
                            peer(self.writer), self.send_timeout_s)
                self.writer.transport.abort()
                await self.protocol.handle(Closed())
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())

    async def _idle_timeout(self) -> None:
        waited = 0.0
        for deadline in sorted({self.header_timeout_s, self.config.keep_alive_timeout}):
            # Not cut short when the worker stops: a request a client is sending on this idle connection right
            # then is still served (its answer says Connection: close) rather than lost to a closing socket.
            await asyncio.sleep(deadline - waited)
            waited = deadline
            if self._headers_begun():
                if waited >= self.header_timeout_s:
                    log.warning("client %s too slow: headers not complete within %.1f s; connection closed",
                                peer(self.writer), self.header_timeout_s)
                    break
            elif waited >= self.config.keep_alive_timeout:
                break
        await asyncio.shield(self._initiate_server_close())

    async def _read_data(self) -> None:
        """hypercorn's, but for input dropped unparsed after ``drop_input``; the idle timer stops at the end."""
        while not self.reader.at_eof():
            try:
                async with asyncio.timeout(self._read_timeout_s()):
                    data = await self.reader.read(MAX_RECV)
            except (ConnectionError, OSError, TimeoutError):
                break
            if self.dropping_until is None:
                await self.protocol.handle(RawData(data))
            # Not kept while waiting for the next read: an idle or refused connection would hold up to MAX_RECV.
            del data
            if self.dropping_until is None:
                # A request that began in this chunk is looked at (and maybe refused, see drop_input) before the
                # rest of its body is parsed: its app task runs now, not after the whole buffered body.
                await asyncio.sleep(0)
        if self.dropping_until is None:
            await self.protocol.handle(Closed())
        await self.idle_task.stop()

    def _read_timeout_s(self) -> float | None:
        if self.dropping_until is None:
            return self.config.read_timeout
        return max(0.0, self.dropping_until - self.loop.time())

    def _headers_begun(self) -> bool:
        connection = getattr(self.protocol.protocol, "connection", None)  # h11's; HTTP/2 has no half-read state
        trailing = getattr(connection, "trailing_data", (b"", False))
        return bool(trailing[0])
