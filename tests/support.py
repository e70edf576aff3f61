"""Helpers the tests share: request bodies and real servers on loopback ports."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from clouddetect.client import wait_ready
from clouddetect.lab.capacity.locust_runs import free_port

SERVER_START_TIMEOUT_S = 60.0
# Every exact engine gives the reference's labels and rectangles; their accuracies differ in the last float digits.
ACCURACY_TOLERANCE = 1e-4


def assert_same_objects(got: list[dict[str, Any]], expected: list[dict[str, Any]], what: object = "") -> None:
    """An answer's objects as the reference's (OpenCV on the Darknet files): same labels and rectangles, each
    accuracy within ``ACCURACY_TOLERANCE``; the order may differ only between near-equal accuracies."""
    got, expected = sorted(got, key=_place), sorted(expected, key=_place)
    assert _without_accuracy(got) == _without_accuracy(expected), what
    for answer, reference in zip(got, expected, strict=True):
        assert abs(answer["accuracy"] - reference["accuracy"]) <= ACCURACY_TOLERANCE, (what, answer, reference)


def _place(obj: dict[str, Any]) -> tuple[Any, ...]:
    return obj["label"], *(obj["rectangle"][k] for k in ("left", "top", "width", "height"))


def _without_accuracy(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in o.items() if k != "accuracy"} for o in objects]


def request_body(path: Path, request_id: str | None = None) -> dict[str, str]:
    return {"id": request_id or str(uuid.uuid4()), "image": base64.b64encode(path.read_bytes()).decode()}


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[str]
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def live_server(tmp_path: Path, *flags: str, env: dict[str, str] | None = None,
                in_cgroups: Sequence[Path] = ()) -> Iterator[LiveServer]:
    """``clouddetect serve`` in a process of its own on a free loopback port (inside ``in_cgroups``, v1 cgroup
    folders, when given), stopped with SIGTERM."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    command = [sys.executable, "-m", "clouddetect", "serve", "--host", "127.0.0.1", "--port", str(port), *flags]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, **(env or {})},
                                   preexec_fn=(lambda: _join(in_cgroups)) if in_cgroups else None)  # noqa: PLW1509
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        try:
            wait_ready(server.url, SERVER_START_TIMEOUT_S, still_starting=lambda: process.poll() is None)
        except TimeoutError as exc:
            raise RuntimeError(f"server did not start (exit code {process.poll()}):\n{server.log()}") from exc
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def http_server(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """A scripted ``http.server`` on a free loopback port, a thread per connection; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    """An answer whose length is given, so that the client keeps its connection for the next request."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _join(cgroups: Sequence[Path]) -> None:
    for group in cgroups:
        (group / "cgroup.procs").write_text(str(os.getpid()))


def stand_in_commands(tmp_path: Path, scripts: dict[str, str]) -> Path:
    """A folder of executable scripts by name, to put first on PATH where a command this machine lacks (ssh to a
    VM, sudo as root) is run by the script under test; returns the folder."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, script in scripts.items():
        (folder / name).write_text(script)
        (folder / name).chmod(0o755)
    return folder


APT_LOCK_TIMEOUT_S = 600


def apt_install(packages: list[str]) -> None:
    """Installs Debian packages a test needs (CI runs as root on a fresh machine, like the tests' other tools)."""
    assert os.geteuid() == 0, f"install as root: apt-get install {' '.join(packages)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", f"-oDPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}", "-q"]
    subprocess.run([*apt, "update"], check=True, env=env)
    subprocess.run([*apt, "install", "-y", "--no-install-recommends", *packages], check=True, env=env)
