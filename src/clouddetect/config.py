"""Every setting of the service in one place.

Values come from the defaults below, then ``CLOUDDETECT_<NAME>`` environment variables, then command-line flags
(the CLI passes them as overrides). Each limit, timeout and size carries its unit in its name.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clouddetect.settings_fields import setting, settings_values

ENV_PREFIX = "CLOUDDETECT_"
ENGINES = ("auto", "opencv", "openvino")
PRECISIONS = ("f32", "bf16")
WINOGRAD_CHOICES = ("auto", "on", "off")
# Earlier boolean values of ``winograd``, still accepted.
WINOGRAD_ALIASES = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}


def _default_model_dir() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "clouddetect" / "yolov3-tiny"


def _default_instance_name() -> str:
    # Kubernetes passes the pod name through the Downward API; elsewhere the host name says who answered.
    return os.environ.get("POD_NAME") or socket.gethostname()


@dataclass(frozen=True)
class Settings:
    """The service's settings; defaults suit one pod with CPU 0.5 and memory 512Mi."""

    host: str = setting("0.0.0.0", "Address to listen on.")
    port: int = setting(5000, "TCP port to listen on (above 1024).")
    workers: int = setting(1, "Worker processes; each loads its own copy of the model.")
    threads: int = setting(256, "Request threads per worker; a request takes one once it has fully arrived.")
    max_connections: int = setting(
        4096, "Open connections per worker; past it new connections are closed at once; each costs ~18 KiB."
    )
    listen_backlog: int = setting(2048, "Connections the kernel queues until the worker accepts them.")
    header_timeout_s: float = setting(
        10.0, "Time to send a request's complete headers, from the connection's opening or previous answer."
    )
    body_timeout_s: float = setting(60.0, "Most time to send a request's body, however large (408 after).")
    min_body_rate_bytes_per_s: int = setting(
        16 * 1024, "Slowest upload accepted: a body gets header_timeout_s plus its size at this rate (408 after)."
    )
    send_timeout_s: float = setting(
        30.0, "Most time a client may take to receive an answer's bytes; a client that stops reading is cut off."
    )
    max_requests_per_connection: int = setting(
        1000, "Requests one keep-alive connection carries; the answer to the last says Connection: close."
    )
    max_header_bytes: int = setting(16 * 1024, "Largest request line and headers accepted (431 above).")
    max_receiving_body_bytes: int = setting(
        64 * 1024 * 1024, "Bytes of bodies still arriving per worker; past it the answer is 503 with Retry-After."
    )
    inference_threads: int = setting(1, "OpenCV threads per inference; more than the CPU quota buys nothing.")
    winograd: str = setting(
        "auto", "OpenCV's Winograd convolutions (~2x the images/s on AMD EPYC, +20% on Intel; peak memory 501 vs 296"
        " MiB): auto, on or off;"
        " auto turns them on where the memory limit is at least winograd_min_memory_bytes."
    )
    winograd_min_memory_bytes: int = setting(
        640 * 1024 * 1024, "Memory limit (cgroup, else the machine's) from which winograd auto turns Winograd on:"
        " its 501 MiB peak stays under 80% of it (501 / 0.8 = 626, rounded up to 640 MiB)."
    )
    # The inference engine (see clouddetect.engines); openvino needs clouddetect[openvino] and `model convert`.
    engine: str = setting(
        "auto", "Inference engine: auto (times the exact engines installed as the worker starts and keeps the fastest"
        " whose memory fits), opencv (the Darknet files, the reference) or openvino (the converted graph)."
    )
    engine_trial_forwards: int = setting(3, "Forward passes auto times each engine on (after one untimed pass).")
    engine_memory_fraction: float = setting(
        0.8, "Share of the memory limit auto lets an engine, the process and the waiting requests' images take."
    )
    precision: str = setting(
        "f32", "Arithmetic of the openvino engine: f32 (OpenCV's answers) or bf16 (faster, answers move slightly)."
    )
    confidence_threshold: float = setting(0.5, "Smallest class score reported.")
    nms_threshold: float = setting(
        0.4, "IoU above which the weaker of two overlapping boxes is dropped, whatever their classes."
    )
    input_size_px: int = setting(416, "Side of the square network input.")
    max_waiting_requests: int = setting(
        192, "Requests per worker waiting for inference; past it the answer is 503 with Retry-After."
    )
    max_queue_wait_s: float = setting(
        20.0, "Longest a detection request waits for its forward pass, unless its X-Request-Timeout header is"
        " shorter; below the common 30 s client timeout, so no answer is worked on for a client that gave up."
    )
    max_refusals_per_s: float = setting(
        25.0, "Refusals on arrival answered per second per worker; more wait their turn (at most until their"
        " deadline), so clients that retry at once cannot take the CPU from inference (~1 ms each)."
    )
    refusal_log_interval_s: float = setting(
        10.0, "Refusals on arrival are logged as one summary line per this many seconds, not one line each."
    )
    max_waiting_body_bytes: int = setting(
        128 * 1024 * 1024, "Bytes of request bodies waiting for inference per worker; past it the answer is 503."
    )
    malloc_arenas: int = setting(
        2, "glibc malloc arenas per worker; glibc's own limit (8 per core) keeps more freed memory."
    )
    decode_slots: int = setting(1, "Images decoded at once per worker; bounds the memory of large photos.")
    retry_after_s: int = setting(1, "Retry-After sent with 503 answers.")
    max_body_bytes: int = setting(16 * 1024 * 1024, "Largest request body accepted (413 above).")
    max_image_pixels: int = setting(
        25_000_000, "Largest image decoded, width x height (413 above): a small file can hold a huge image."
    )
    graceful_timeout_s: int = setting(30, "Time in-flight requests get to finish after SIGTERM.")
    keepalive_s: float = setting(5.0, "How long a connection that sends nothing is held open (idle keep-alive).")
    model_dir: Path = setting(_default_model_dir(), "Folder holding yolov3-tiny.cfg, .weights and coco.names.")
    download_timeout_s: int = setting(300, "Time allowed to download the model files.")
    instance_name: str = setting(_default_instance_name(), "Name logged with each request (pod or host).")
    log_level: str = setting("info", "Log level: debug, info, warning or error.")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then environment variables, then the given overrides (None means not given)."""
        return dataclasses.replace(cls(), **settings_values(cls, ENV_PREFIX, environ, overrides))

    def __post_init__(self) -> None:
        for name in ("workers", "threads", "max_connections", "listen_backlog", "max_requests_per_connection",
                     "inference_threads",
                     "input_size_px", "max_waiting_requests", "max_waiting_body_bytes", "malloc_arenas",
                     "decode_slots", "max_body_bytes", "max_image_pixels", "min_body_rate_bytes_per_s",
                     "max_header_bytes", "max_receiving_body_bytes", "winograd_min_memory_bytes",
                     "engine_trial_forwards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("header_timeout_s", "body_timeout_s", "send_timeout_s", "keepalive_s", "graceful_timeout_s",
                     "max_queue_wait_s", "refusal_log_interval_s", "max_refusals_per_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0")
        for name in ("max_waiting_body_bytes", "max_receiving_body_bytes"):
            if getattr(self, name) < self.max_body_bytes:
                raise ValueError(f"{name} must be at least max_body_bytes")
        if not 1024 < self.port < 65536:
            raise ValueError("port must be above 1024 and below 65536")
        for name in ("confidence_threshold", "nms_threshold", "engine_memory_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        winograd = str(self.winograd).strip().lower()
        object.__setattr__(self, "winograd", WINOGRAD_ALIASES.get(winograd, winograd))
        if self.winograd not in WINOGRAD_CHOICES:
            raise ValueError(f"winograd must be one of {', '.join(WINOGRAD_CHOICES)} (or true/false)")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.engine != "openvino" and self.precision != "f32":
            raise ValueError(f"precision {self.precision} needs engine openvino; {self.engine} runs f32 only")
        object.__setattr__(self, "model_dir", Path(self.model_dir))
