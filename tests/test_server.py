"""A real gunicorn server on loopback: concurrency, overload, logs and graceful shutdown."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from clouddetect.answers import ENDPOINT
from clouddetect.codec import decode_image
from clouddetect.contract import response_body
from clouddetect.server import gunicorn_options
from support import live_server, request_body

pytestmark = pytest.mark.slow
CONCURRENT_CLIENTS = 64
REQUEST_TIMEOUT_S = 120
KEEP_ALIVE_ATTEMPTS = 40


def post(url: str, payload: dict[str, str]) -> requests.Response:
    return requests.post(url + ENDPOINT, json=payload, timeout=REQUEST_TIMEOUT_S)


def test_gunicorn_runs_one_thread_per_request(settings) -> None:
    options = gunicorn_options(settings)
    assert options["worker_class"] == "gthread" and options["threads"] == settings.threads


def test_concurrent_answers_are_not_mixed(server, detector, images) -> None:
    expected = {p: response_body("", detector.detect(decode_image(p.read_bytes())))["objects"] for p in images}
    payloads = [(path, request_body(path)) for path in images]
    with ThreadPoolExecutor(max_workers=CONCURRENT_CLIENTS) as pool:
        answers = list(pool.map(lambda item: post(server.url, item[1]), payloads))
    for (path, payload), answer in zip(payloads, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["id"] == payload["id"]
        assert body["objects"] == expected[path], path.name


def test_chunked_body_is_411_length_required(server) -> None:
    chunks = iter([b'{"id": "chunked", ', b'"image": "YWJj"}'])
    answer = requests.post(server.url + ENDPOINT, data=chunks, headers={"Content-Type": "application/json"},
                           timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 411 and answer.json()["error"]["code"] == "length_required"


def test_each_request_is_logged_with_the_instance_name(tmp_path, images) -> None:
    with live_server(tmp_path, env={"POD_NAME": "clouddetect-test-pod"}) as running:
        payload = request_body(images[1], "log-check-1")
        assert post(running.url, payload).status_code == 200
        post(running.url, {"id": "log-check-2", "image": "%%%"})
        post(running.url, {"id": "forged\nrequest id=x status=200", "image": "%%%"})
    log = running.log()
    assert "request id=log-check-1 status=200 objects=3" in log
    assert "instance=clouddetect-test-pod" in log
    assert "request id=log-check-2 status=400" in log and "error=invalid_base64" in log
    assert "Traceback" not in log
    assert "request id=forged\\nrequest id=x status=200 status=400" in log, "an id cannot start a log line"


def test_overload_is_503_with_retry_after_and_nothing_is_lost(tmp_path, images) -> None:
    with live_server(tmp_path, "--max-waiting-requests", "2", "--retry-after-s", "3") as running:
        payloads = [request_body(path) for path in images[:24]]
        with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
            answers = list(pool.map(lambda p: post(running.url, p), payloads))
        statuses = [a.status_code for a in answers]
        assert statuses.count(503) > 0 and statuses.count(200) > 0
        assert set(statuses) == {200, 503}
        for payload, answer in zip(payloads, answers, strict=True):
            if answer.status_code == 200:
                assert answer.json()["id"] == payload["id"]
            else:  # refused before the body is read, so the client matches it by its own request
                assert answer.headers["Retry-After"] == "3"
                assert answer.json()["error"]["code"] == "overloaded"
        assert post(running.url, payloads[0]).status_code == 200


def test_a_refused_request_leaves_its_connection_usable(tmp_path, images) -> None:
    """A 503 answered before the body is read must not break the client's keep-alive connection: the next request
    goes over the same socket (http.client reconnects only when told the connection closes, which fails here)."""
    body = json.dumps(request_body(images[1])).encode()
    with live_server(tmp_path, "--max-waiting-requests", "1") as running:
        busy = threading.Event()

        def keep_busy() -> None:
            with requests.Session() as own:
                while not busy.is_set():
                    post_with(own, running.url, request_body(images[1]))

        address = urlsplit(running.url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=REQUEST_TIMEOUT_S)
        connection.connect()
        socket_used = connection.sock
        statuses: list[int] = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            hogs = [pool.submit(keep_busy) for _ in range(2)]
            try:
                while len(statuses) < KEEP_ALIVE_ATTEMPTS and 503 not in statuses[:-1]:
                    connection.request("POST", ENDPOINT, body=body, headers={"Content-Type": "application/json"})
                    answer = connection.getresponse()
                    answer.read()
                    statuses.append(answer.status)
                    assert connection.sock is socket_used, f"the connection closed after {statuses}"
            finally:
                busy.set()
                connection.close()
            for hog in hogs:
                hog.result()
    assert 503 in statuses[:-1] and set(statuses) <= {200, 503}, statuses


def post_with(session: requests.Session, url: str, payload: dict[str, str]) -> requests.Response:
    return session.post(url + ENDPOINT, json=payload, timeout=REQUEST_TIMEOUT_S)


def test_sigterm_lets_in_flight_requests_finish(tmp_path, images) -> None:
    with live_server(tmp_path) as running:
        payloads = [request_body(path) for path in images[:8]]
        with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
            futures = [pool.submit(post, running.url, p) for p in payloads]
            wait_until_in_flight(running.url, len(payloads))
            running.process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert running.process.wait(timeout=60) == 0
    assert [a.status_code for a in answers] == [200] * len(payloads)
    assert [a.json()["id"] for a in answers] == [p["id"] for p in payloads]


def wait_until_in_flight(url: str, count: int, timeout_s: float = 30) -> None:
    """Wait until the server has taken ``count`` requests in; ones still in the listen backlog would be refused."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = requests.get(url + "/metrics", timeout=5).text
        if f"clouddetect_requests_in_flight {count:.1f}" in metrics:
            return
        time.sleep(0.01)
    raise TimeoutError(f"{count} requests did not become in flight")


def test_serving_without_model_files_fails_fast_saying_what_to_run(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clouddetect", "serve", "--port", "5999", "--model-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "clouddetect model fetch" in result.stderr and "missing" in result.stderr
