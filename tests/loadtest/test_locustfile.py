"""The locustfile run by Locust itself (headless, distributed, web UI) against a real server on loopback.

Locust monkey-patches whatever process imports it, so it only ever runs in processes of its own here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
import requests

from clouddetect.lab.capacity.locust_runs import LOCUSTFILE
from support import LiveServer, free_port, http_server, live_server, send_json

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 120.0
WEB_UI_START_TIMEOUT_S = 60.0


def headless(server_url: str, images: list[Path], tmp_path: Path, *flags: str) -> dict:
    """Run Locust headless; returns its final statistics (Locust's own JSON) and leaves its CSVs in tmp_path."""
    stats_file = tmp_path / "stats.json"  # Locust appends ".json" to the name it is given
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", server_url,
               "--images", str(images[0].parent), "--csv", str(tmp_path / "run"),
               "--json-file", str(stats_file.with_suffix("")), "--exit-code-on-error", "0", *flags]
    subprocess.run(command, check=True, timeout=RUN_TIMEOUT_S, capture_output=True)
    [entry] = json.loads(stats_file.read_text())
    return entry


def failure_kinds(tmp_path: Path) -> set[str]:
    with (tmp_path / "run_failures.csv").open(newline="") as handle:
        return {row["Error"] for row in csv.DictReader(handle)}


def answered(server: LiveServer, status: int) -> int:
    return server.log().count(f" status={status} ")


def test_headless_users_send_images_back_to_back_and_every_answer_passes(
    tmp_path: Path, images: list[Path]
) -> None:
    with live_server(tmp_path) as server:
        stats = headless(server.url, images, tmp_path, "-u", "2", "-r", "2", "-t", "4s")
        served = answered(server, 200)
    assert stats["name"] == "/api/object_detection"
    assert stats["num_requests"] > 4
    assert stats["num_failures"] == 0
    assert served >= stats["num_requests"]


class RecordingHandler(BaseHTTPRequestHandler):
    """Answers every detection with no objects, noting the image each connection (one per user) sent first."""

    protocol_version = "HTTP/1.1"
    first_images: ClassVar[dict[int, str]] = {}

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.first_images.setdefault(self.client_address[1], hashlib.sha256(body["image"].encode()).hexdigest())
        send_json(self, 200, json.dumps({"id": body["id"], "objects": []}).encode())

    def log_message(self, *_args: object) -> None:
        pass


def test_users_start_at_different_images(tmp_path: Path, images: list[Path]) -> None:
    users = 12
    with http_server(RecordingHandler) as url:
        stats = headless(url, images, tmp_path, "-u", str(users), "-r", str(users), "-t", "8s", "--wait-s", "1")
    assert stats["num_failures"] == 0
    first = RecordingHandler.first_images
    assert len(first) == users
    # In folder order from a random start each: twelve users all starting at one image is a 1 in 128^11 chance.
    assert len(set(first.values())) > 1


def test_random_order_and_think_time_are_settings(tmp_path: Path, images: list[Path]) -> None:
    with live_server(tmp_path) as server:
        stats = headless(server.url, images, tmp_path, "-u", "1", "-r", "1", "-t", "3s",
                         "--image-order", "random", "--wait-s", "1")
    # One user thinking 1 s after each answer sends about one request a second, not ten.
    assert 1 <= stats["num_requests"] <= 4
    assert stats["num_failures"] == 0


def test_overload_answers_count_as_http_503_failures(tmp_path: Path, images: list[Path]) -> None:
    with live_server(tmp_path, "--max-waiting-requests", "1") as server:
        stats = headless(server.url, images, tmp_path, "-u", "4", "-r", "4", "-t", "3s")
    assert stats["num_failures"] > 0
    assert "CatchResponseError('HTTP 503')" in failure_kinds(tmp_path)


def test_answers_slower_than_the_request_timeout_fail(tmp_path: Path, images: list[Path]) -> None:
    with live_server(tmp_path) as server:
        stats = headless(server.url, images, tmp_path, "-u", "1", "-r", "1", "-t", "3s",
                         "--request-timeout-s", "0.01")
    assert stats["num_requests"] > 0
    assert stats["num_failures"] == stats["num_requests"]
    # Told the timeout (X-Request-Timeout), the service refuses at once what it cannot answer within it.
    assert failure_kinds(tmp_path) <= {"CatchResponseError('timeout')", "CatchResponseError('HTTP 503')"}


def test_distributed_mode_master_with_worker_processes(tmp_path: Path, images: list[Path]) -> None:
    with live_server(tmp_path) as server:
        stats = headless(server.url, images, tmp_path, "-u", "2", "-r", "2", "-t", "5s", "--processes", "2")
    assert stats["num_requests"] > 0
    assert stats["num_failures"] == 0


@contextmanager
def web_ui(server_url: str, images: list[Path], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", server_url,
               "--images", str(images[0].parent), "--web-host", "127.0.0.1", "--web-port", str(port)]
    with (tmp_path / "locust.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    ui = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _get(ui + "/") is not None, WEB_UI_START_TIMEOUT_S)
        yield ui
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=RUN_TIMEOUT_S)


def _get(url: str) -> requests.Response | None:
    try:
        response = requests.get(url, timeout=5)
    except requests.ConnectionError:
        return None
    return response if response.ok else None


def poll(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_web_ui_starts_a_swarm_that_sends_requests(tmp_path: Path, images: list[Path]) -> None:
    with live_server(tmp_path) as server, web_ui(server.url, images, tmp_path) as ui:
        started = requests.post(ui + "/swarm", data={"user_count": 1, "spawn_rate": 1, "host": server.url}, timeout=5)
        assert started.json()["success"]

        def some_answered() -> bool:
            stats = _get(ui + "/stats/requests")
            return stats is not None and _total(stats.json())["num_requests"] > 2

        poll(some_answered, RUN_TIMEOUT_S)
        total = _total(requests.get(ui + "/stats/requests", timeout=5).json())
        requests.get(ui + "/stop", timeout=5)
    assert total["num_failures"] == 0


def _total(stats: dict) -> dict:
    return next(s for s in stats["stats"] if s["name"] == "Aggregated")
