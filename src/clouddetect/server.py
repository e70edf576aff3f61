"""Serving the Flask app with hypercorn: requests are read on an event loop, then served one per thread.

A slow client must not hold a request thread, an admission slot or an unbounded wait. hypercorn reads a request on
its asyncio loop and runs a WSGI app in the loop's executor only once the whole body has arrived; here that executor
is a pool of ``threads`` threads, and every wait of a connection is bounded by a setting:
- headers: complete within ``header_timeout_s`` of the connection's opening or its previous answer, else closed;
- idle keep-alive: a connection that sends nothing for ``keepalive_s`` is closed;
- body: ``header_timeout_s`` plus its size at ``min_body_rate_bytes_per_s``, at most ``body_timeout_s``, else 408;
- answers: a client that does not take an answer's bytes within ``send_timeout_s`` is cut off;
- connections: past ``max_connections`` per worker a new one is closed at once.
Each slow client is logged once, with its address. All server tuning is derived from ``Settings`` here, so the CLI,
the image and the manifests never repeat it. Each worker process loads the model once and warms it up in the
background: ``/healthz`` answers at once, ``/readyz`` only after the first inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import io
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import wait
from typing import Any

from flask import Flask
from hypercorn.app_wrappers import WSGIWrapper, _build_environ
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import EventWrapper, WorkerContext
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, Event, RawData

from clouddetect.api import create_app
from clouddetect.cgroup_limits import cpu_limit_cores, memory_limit_bytes
from clouddetect.config import Settings
from clouddetect.detector import Detector
from clouddetect.engines import EngineError, check_engine, engine_label
from clouddetect.errors import REFUSAL_ENVIRON_KEY, ClientError, Overloaded, RequestTimeout
from clouddetect.model_store import locate

log = logging.getLogger("clouddetect.server")
M_ARENA_MAX = -8  # glibc's malloc.h
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# Files a worker opens besides its connections: listening sockets, model files, logs, the executor's pipes.
FILES_BESIDES_CONNECTIONS = 256
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT, force=True)


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


def limit_malloc_arenas(arenas: int) -> None:
    """Cap glibc's malloc arenas before the request threads start.

    glibc gives busy threads arenas of their own (up to 8 per core) and each keeps the memory its requests freed;
    with 128 clients at once that was ~75 MiB more peak memory (benchmarks/memory_under_load.py). Elsewhere a no-op.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        log.debug("mallopt is not available; malloc arenas left as they are")


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards ``wanted`` as far as the hard limit allows; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def build_app(settings: Settings) -> Flask:
    """The app of one worker process: model loaded now, warmed up in the background."""
    configure_logging(settings.log_level)
    limit_malloc_arenas(settings.malloc_arenas)
    cpus = cpu_limit_cores()
    log.info("limits this process lives under: memory %d MiB, CPU %s", memory_limit_bytes() // (1024 * 1024),
             "no quota" if cpus is None else f"{cpus:g} (CFS quota)")
    try:
        detector = Detector(locate(settings.model_dir), settings)
    except EngineError as exc:
        log.error("%s", exc)  # one clear line; the worker, and so the server, stops
        raise SystemExit(1) from None
    engine = detector.engine
    log.info("engine %s (%s), CPU features %s, kernels %s", engine_label(engine), engine.choice,
             " ".join(engine.cpu_features), " ".join(engine.kernels) or "-")
    threading.Thread(target=_warm_up, args=(detector,), name="warm-up", daemon=True).start()
    return create_app(settings, detector)


def _warm_up(detector: Detector) -> None:
    try:
        detector.warm_up()
    except Exception:  # noqa: BLE001 - readiness stays red and says why in the log
        log.exception("warm-up failed; the worker will not turn ready")
    else:
        log.info("model warmed up; ready")


def _client(scope: dict[str, Any]) -> str:
    host, port = scope.get("client") or ("-", 0)
    return f"{host}:{port}"


def _peer(writer: asyncio.StreamWriter) -> str:
    host, port, *_ = writer.get_extra_info("peername") or ("-", 0)
    return f"{host}:{port}"


def _body_length(scope: dict[str, Any]) -> int | None:
    """The body's announced length (0 without one), or None for a chunked body, which is never read."""
    headers = dict(scope["headers"])  # h11 has merged or refused repeated framing headers
    if b"transfer-encoding" in headers:
        return None
    return int(headers.get(b"content-length", 0))


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
        environ = _build_environ(scope, body)
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

    async def protocol_send(self, event: Event) -> None:
        """hypercorn's, with the wait for the client to take an answer's bytes bounded by ``send_timeout_s``."""
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                self.writer.write(event.data)
                await asyncio.wait_for(self.writer.drain(), self.send_timeout_s)
            except TimeoutError:
                log.warning("client %s too slow: the answer was not taken within %.1f s; connection closed",
                            _peer(self.writer), self.send_timeout_s)
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
                                _peer(self.writer), self.header_timeout_s)
                    break
            elif waited >= self.config.keep_alive_timeout:
                break
        await asyncio.shield(self._initiate_server_close())

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()

    def _headers_begun(self) -> bool:
        connection = getattr(self.protocol.protocol, "connection", None)  # h11's; HTTP/2 has no half-read state
        trailing = getattr(connection, "trailing_data", (b"", False))
        return bool(trailing[0])



async def serve_worker(app: Flask, settings: Settings, sockets: Sockets,
                       shutdown: Callable[[], Awaitable[Any]]) -> None:
    """Serve on ``sockets`` until ``shutdown`` returns, then let in-flight requests finish (``graceful_timeout_s``).

    hypercorn's own worker loop with two additions: the executor is ``threads`` request threads, and a connection
    past ``max_connections`` is closed at once.
    """
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(settings.threads, thread_name_prefix="request"))
    config = hypercorn_config(settings)
    context = WorkerContext(None)
    stopping = Stopping(context.terminated)
    wrapped = BufferedWSGI(app, settings, stopping)
    connections: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(connections) >= settings.max_connections:
            log.warning("client %s refused: %d connections open already", _peer(writer), len(connections))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        try:
            await Connection(wrapped, loop, config, context, {}, reader, writer,
                             header_timeout_s=settings.header_timeout_s, send_timeout_s=settings.send_timeout_s)
        except asyncio.CancelledError:
            log.warning("client %s: connection closed unfinished at shutdown", _peer(writer))

    servers = [await asyncio.start_server(on_connection, sock=sock, backlog=config.backlog)
               for sock in sockets.insecure_sockets]
    log.info("listening on %s with %d request threads", ", ".join(config.bind), settings.threads)
    await shutdown()
    deadline = loop.time() + config.graceful_timeout
    log.info("stopping: %d connections open; in-flight requests get %d s", len(connections), config.graceful_timeout)
    for server in servers:
        server.close()
        await server.wait_closed()
    await stopping.begin(within_s=config.graceful_timeout)
    if connections:
        _done, unfinished = await asyncio.wait(connections, timeout=max(0.0, deadline - loop.time()))
        for task in unfinished:
            task.cancel()


def run_worker(settings: Settings, sockets: Sockets) -> None:
    """One worker process: load the app, serve until SIGTERM or SIGINT, then drain."""
    app = build_app(settings)
    wanted = settings.max_connections + FILES_BESIDES_CONNECTIONS
    if raise_open_files_limit(wanted) < wanted:
        log.warning("open files limited below %d: fewer than max_connections can be served", wanted)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_worker(app, settings, sockets, stop.wait)

    asyncio.run(main())
    log.info("stopped")


def serve(settings: Settings) -> None:
    """Check the model files and the engine first, so neither fails only in the workers; then serve.

    One worker serves in this process. More are forked after the sockets are bound; SIGTERM or SIGINT is passed
    on to each, and when one ends the others are stopped too, so the container restarts whole.
    """
    check_engine(locate(settings.model_dir), settings)
    sockets = hypercorn_config(settings).create_sockets()
    if settings.workers == 1:
        run_worker(settings, sockets)
        return
    sys.exit(_supervise(settings, sockets))


def _forked_worker(settings: Settings, sockets: Sockets) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)  # the supervisor's handlers came along with the fork
    run_worker(settings, sockets)


def _supervise(settings: Settings, sockets: Sockets) -> int:
    context = multiprocessing.get_context("fork")  # nothing has started a thread yet in this process
    workers = [context.Process(target=_forked_worker, args=(settings, sockets), name=f"worker-{n}")
               for n in range(settings.workers)]

    def stop(*_: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.start()
    wait([worker.sentinel for worker in workers])
    stop()
    for worker in workers:
        worker.join()
    return max(abs(worker.exitcode or 0) for worker in workers)
