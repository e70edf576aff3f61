"""What an experiment ran on, recorded once in ``experiment.json`` so that figures are never read without it.

The code version, this load generator's host and its network path to the service (interface, MTU, queueing
discipline, round-trip time). Each item is read as far as this machine allows; what cannot be read is null.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

import clouddetect

COMMAND_TIMEOUT_S = 10.0
RTT_PROBES = 5
HTTP_TIMEOUT_S = 10.0


def _command(*args: str, cwd: Path | None = None) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=cwd, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """The package version, and the git commit (with uncommitted changes flagged) when run from a checkout."""
    source = Path(clouddetect.__file__).resolve().parent
    commit = _command("git", "rev-parse", "HEAD", cwd=source)
    changes = _command("git", "status", "--porcelain", "--untracked-files=no", cwd=source) if commit else None
    return {"package": metadata.version("clouddetect"), "git_commit": commit,
            "uncommitted_changes": bool(changes) if commit else None}


def client_network(url: str) -> dict[str, Any]:
    """The route from this host to the service and its round-trip time (GET /healthz)."""
    host = urlsplit(url).hostname or ""
    try:
        address = str(ipaddress.ip_address(socket.gethostbyname(host)))
    except (OSError, ValueError):
        address = None
    route = _command("ip", "route", "get", address) if address else None
    device = _word_after(route, "dev")
    return {
        "service_address": address,
        "route": route.splitlines()[0] if route else None,
        "interface": device,
        "mtu": _read_int(Path("/sys/class/net") / device / "mtu") if device else None,
        "qdisc": _command("tc", "qdisc", "show", "dev", device) if device else None,
        "rtt_ms_median": _rtt_ms(url),
    }


def _word_after(text: str | None, word: str) -> str | None:
    words = (text or "").split()
    return words[words.index(word) + 1] if word in words[:-1] else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _rtt_ms(url: str) -> float | None:
    times = []
    with requests.Session() as session:
        for _ in range(RTT_PROBES):
            started = time.perf_counter()
            try:
                session.get(url.rstrip("/") + "/healthz", timeout=HTTP_TIMEOUT_S).raise_for_status()
            except requests.RequestException:
                return None
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def load_generator() -> dict[str, Any]:
    return {
        "host": platform.node(), "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(), "locust": metadata.version("locust"),
    }
