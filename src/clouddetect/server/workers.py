"""A worker process (its app, its event loop, its signals) and the forking and supervising of several."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import wait
from typing import Any

from flask import Flask
from hypercorn.config import Sockets

from clouddetect.api import create_app
from clouddetect.cgroup_limits import cpu_limit_cores, memory_limit_bytes
from clouddetect.config import Settings
from clouddetect.detector import Detector
from clouddetect.engines import EngineError, check_engine, engine_label
from clouddetect.model_store import locate
from clouddetect.server.bridge import BufferedWSGI
from clouddetect.server.connections import Connection, Stopping, WorkerContext, hypercorn_config, peer

log = logging.getLogger("clouddetect.server")
M_ARENA_MAX = -8  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
# Blocks from this size up (request bodies, socket reads, images) are mapped on their own and given back when freed.
MMAP_THRESHOLD_BYTES = 128 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# Files a worker opens besides its connections: listening sockets, model files, logs, the executor's pipes.
FILES_BESIDES_CONNECTIONS = 256


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT, force=True)


def limit_malloc_arenas(arenas: int) -> None:
    """Cap glibc's malloc arenas before the request threads start, and keep large blocks out of them.

    glibc gives busy threads arenas of their own (up to 8 per core) and each keeps the memory its requests freed;
    with 128 clients at once that was ~75 MiB more peak memory (benchmarks/memory_under_load.py). glibc also raises
    its mmap threshold as large blocks are freed, after which bodies and socket reads of hundreds of connections
    fragment the heap: with 900 clients past capacity, ~85 MiB more (benchmarks/overload.py). Elsewhere a no-op.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, arenas)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
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
            log.warning("client %s refused: %d connections open already", peer(writer), len(connections))
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
            log.warning("client %s: connection closed unfinished at shutdown", peer(writer))

    servers = [await asyncio.start_server(on_connection, sock=sock, backlog=config.backlog)
               for sock in sockets.insecure_sockets]
    reporting = asyncio.ensure_future(wrapped.refusals.report(settings.refusal_log_interval_s))
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
    reporting.cancel()
    wrapped.refusals.flush()


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
