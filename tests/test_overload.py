"""Past its capacity the service works only for clients that still wait, refuses cheaply, and stays within its
pod's memory: real servers on loopback, real images, real connections (some cut short on purpose)."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from clouddetect.lab.capacity.targets import poll
from clouddetect.verdicts import ENDPOINT, failure_kind
from support import live_server, request_body

pytestmark = pytest.mark.slow
V1_ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024
QUEUED = 32  # requests sent at once to keep the server busy: ~2 s of inference on a whole core
POLL_S = 0.05
WAIT_S = 60.0


def metric(url: str, name: str) -> float:
    """A sample's value in /metrics (0 when absent)."""
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def keep_busy(url: str, images: list[Path]) -> list[threading.Thread]:
    """``QUEUED`` requests sent at once; returns once half of them wait for or run inference."""
    senders = [threading.Thread(target=requests.post, args=(url + ENDPOINT,),
                                kwargs={"json": request_body(image), "timeout": 120}) for image in images[:QUEUED]]
    for sender in senders:
        sender.start()
    poll(lambda: metric(url, "clouddetect_requests_in_flight") >= QUEUED // 2 or None, WAIT_S, POLL_S,
         "half the requests to be in flight")
    return senders


def head(port: int, length: int, timeout_header: str) -> bytes:
    return (f"POST {ENDPOINT} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nX-Request-Timeout: {timeout_header}\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> str:
    """One whole HTTP answer (its head and a Content-Length body) off a socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data.decode()


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    return next(int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:"))


def test_a_request_that_cannot_be_served_in_time_is_refused_before_its_body(tmp_path: Path,
                                                                            images: list[Path]) -> None:
    with live_server(tmp_path) as server:
        busy = keep_busy(server.url, images)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head(server.port, 220_000, "0.2"))  # the headers only: no body byte is sent
            answer = read_answer(sock)
        for sender in busy:
            sender.join()
        assert answer.startswith("HTTP/1.1 503"), answer
        headers, body = answer.split("\r\n\r\n", 1)
        assert "retry-after: " in headers.lower() and "connection: close" in headers.lower()
        assert json.loads(body)["error"]["code"] == "overloaded"
        assert metric(server.url, 'clouddetect_refused_before_body_total{reason="overloaded"}') == 1
        assert "refused on arrival" not in server.log()  # one summary line now and then, not a line each


def test_a_refused_client_reads_its_whole_answer_and_the_connection_closes_cleanly(tmp_path: Path,
                                                                                   images: list[Path]) -> None:
    """Its body is read and dropped unparsed, its 503 says Connection: close, and the server closes only once the
    client has: closing over unread bytes would reset the connection and could destroy the answer."""
    body = json.dumps(request_body(images[-1])).encode()
    with live_server(tmp_path) as server:
        busy = keep_busy(server.url, images)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head(server.port, len(body), "0.2") + body)
            answer = read_answer(sock)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(65536) == b""  # an orderly close (FIN), not ConnectionResetError
        for sender in busy:
            sender.join()
        assert answer.startswith("HTTP/1.1 503") and "connection: close" in answer.lower()
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200


def test_a_request_whose_client_left_is_dropped_before_inference(tmp_path: Path, images: list[Path]) -> None:
    with live_server(tmp_path) as server:
        busy = keep_busy(server.url, images)
        body = json.dumps(request_body(images[-1])).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head(server.port, len(body), "30") + body)
        poll(lambda: metric(server.url, "clouddetect_requests_in_flight") == 0 or None, WAIT_S, POLL_S,
             "the requests in flight to end")
        for sender in busy:
            sender.join()
        assert metric(server.url, 'clouddetect_dropped_total{reason="client_closed_request"}') == 1


@pytest.fixture
def pod_cgroups() -> Iterator[list[Path]]:
    """A memory cgroup of 512 MiB and a cpu cgroup of 0.5 CPU (cgroup v1), as a pod's limits."""
    if not os.access(V1_ROOT / "memory", os.W_OK) or not (V1_ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        pytest.skip("needs writable cgroup v1 memory and cpu hierarchies (root on a cgroup v1 machine)")
    name = f"clouddetect-overload-{os.getpid()}"
    groups = [V1_ROOT / "memory" / name, V1_ROOT / "cpu" / name]
    for group in groups:
        group.mkdir()
    (groups[0] / "memory.limit_in_bytes").write_text(str(512 * MIB))
    (groups[1] / "cpu.cfs_period_us").write_text("100000")
    (groups[1] / "cpu.cfs_quota_us").write_text("50000")
    try:
        yield groups
    finally:
        for group in groups:
            poll(lambda g=group: not (g / "cgroup.procs").read_text().strip() or None, WAIT_S, POLL_S,
                 f"{group} to be empty")
            group.rmdir()


def back_to_back(url: str, bodies: list[bytes], timeout_s: float, stop_at: float, seen: Counter[str],
                 late: list[float]) -> None:
    """A client sending one request after another until ``stop_at``, as naive clients do (no pause on 503)."""
    with requests.Session() as session:
        for index in range(10**9):
            if time.monotonic() >= stop_at:
                return
            request_id = str(uuid.uuid4())
            started = time.monotonic()
            try:
                answer = session.post(url + ENDPOINT, timeout=timeout_s, headers={"Content-Type": "application/json"},
                                      data=bodies[index % len(bodies)].replace(b"REQUEST-ID", request_id.encode()))
                elapsed_s = time.monotonic() - started
                kind = failure_kind(answer.status_code, answer.text, request_id, elapsed_s, timeout_s)
                if answer.status_code == 200 and elapsed_s > timeout_s:
                    late.append(elapsed_s)
            except requests.RequestException as exc:
                kind = failure_kind(0, None, request_id, time.monotonic() - started, timeout_s, exc)
            seen[kind or "answered"] += 1


def test_overload_keeps_memory_bounded_and_answers_in_time(tmp_path: Path, images: list[Path],
                                                           pod_cgroups: list[Path]) -> None:
    clients, seconds, timeout_s = 300, 15.0, 30.0
    bodies = [json.dumps({"id": "REQUEST-ID", "image": base64.b64encode(p.read_bytes()).decode()}).encode()
              for p in images[:32]]
    seen: Counter[str] = Counter()
    late: list[float] = []
    with live_server(tmp_path, in_cgroups=pod_cgroups) as server:
        stop_at = time.monotonic() + seconds
        threads = [threading.Thread(target=back_to_back, args=(server.url, bodies, timeout_s, stop_at, seen, late))
                   for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.process.poll() is None, server.log()
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        peak = int((pod_cgroups[0] / "memory.max_usage_in_bytes").read_text())
    assert not late, f"answers after the client's timeout: {late}"
    assert seen["answered"] > 0 and set(seen) <= {"answered", "HTTP 503"}, seen
    assert peak < 512 * MIB and int((pod_cgroups[0] / "memory.failcnt").read_text()) == 0
