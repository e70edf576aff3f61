"""Serving with gunicorn's gthread worker (one thread per request) around the Flask app.

All server tuning is derived from ``Settings`` here, so the CLI, the image and the manifests never repeat it.
Each worker process loads the model once and warms it up in the background: ``/healthz`` answers at once,
``/readyz`` only after the first inference.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from clouddetect.api import create_app
from clouddetect.config import Settings
from clouddetect.detector import Detector
from clouddetect.model_store import locate

log = logging.getLogger("clouddetect.server")
M_ARENA_MAX = -8  # glibc's malloc.h
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT, force=True)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return {
        "bind": f"{host}:{settings.port}",
        "worker_class": "gthread",
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_connections": settings.max_connections,
        "graceful_timeout": settings.graceful_timeout_s,
        "timeout": settings.worker_timeout_s,
        "keepalive": settings.keepalive_s,
        "accesslog": None,  # the app logs one richer line per request
        "errorlog": "-",
        "loglevel": settings.log_level,
        "proc_name": "clouddetect",
        # gunicorn's control socket sits at one path per user: several servers would clash, and nothing uses it.
        "control_socket_disable": True,
    }


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


def build_app(settings: Settings) -> Flask:
    """The app of one worker process: model loaded now, warmed up in the background."""
    configure_logging(settings.log_level)
    limit_malloc_arenas(settings.malloc_arenas)
    detector = Detector(locate(settings.model_dir), settings)
    threading.Thread(target=_warm_up, args=(detector,), name="warm-up", daemon=True).start()
    return create_app(settings, detector)


def _warm_up(detector: Detector) -> None:
    try:
        detector.warm_up()
    except Exception:  # noqa: BLE001 - readiness stays red and says why in the log
        log.exception("warm-up failed; the worker will not turn ready")
    else:
        log.info("model warmed up; ready")


class Server(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return build_app(self.settings)


def serve(settings: Settings) -> None:
    """Check the model files in the master first, so a missing model fails before any worker starts."""
    locate(settings.model_dir)
    Server(settings).run()
