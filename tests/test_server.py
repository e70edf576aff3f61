"""A real server on loopback: concurrency, overload, logs, graceful shutdown and slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from hypercorn.asyncio.worker_context import EventWrapper
from slow_attack import CUT_OFF_SLACK_S, assert_honest_answered_and_slow_cut_off, attack
from trickling_clients import first_bytes

from clouddetect.codec import decode_image
from clouddetect.request_json import response_body
from clouddetect.server.connections import Stopping, hypercorn_config
from clouddetect.verdicts import ENDPOINT
from support import LiveServer, assert_same_objects, free_port, live_server, request_body

pytestmark = pytest.mark.slow
CONCURRENT_CLIENTS = 64
REQUEST_TIMEOUT_S = 120
# Workers stopped under clients that send each request as soon as the previous answer arrives.
STOP_ROUNDS = 5
BACK_TO_BACK_USERS = 16
ANSWERS_BEFORE_STOP = 200
STOP_WAIT_S = 0.2
# Time for the server to see a closed connection and free its place.
CONNECTION_CLOSE_SEEN_S = 0.5


def post(url: str, payload: dict[str, str]) -> requests.Response:
    return requests.post(url + ENDPOINT, json=payload, timeout=REQUEST_TIMEOUT_S)


def test_server_follows_the_settings(settings) -> None:
    config = hypercorn_config(settings)
    assert config.bind == [f"{settings.host}:{settings.port}"]
    assert (config.keep_alive_timeout, config.graceful_timeout) == (settings.keepalive_s, settings.graceful_timeout_s)
    assert (config.backlog, config.h11_max_incomplete_size) == (settings.listen_backlog, settings.max_header_bytes)


def test_concurrent_answers_are_not_mixed(server, detector, images) -> None:
    expected = {p: response_body("", detector.detect(decode_image(p.read_bytes())))["objects"] for p in images}
    payloads = [(path, request_body(path)) for path in images]
    with ThreadPoolExecutor(max_workers=CONCURRENT_CLIENTS) as pool:
        answers = list(pool.map(lambda item: post(server.url, item[1]), payloads))
    for (path, payload), answer in zip(payloads, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["id"] == payload["id"]
        assert_same_objects(body["objects"], expected[path], path.name)


def test_the_default_service_says_which_engine_it_kept_and_why(server) -> None:
    ready = requests.get(server.url + "/readyz", timeout=5).json()
    assert ready["choice"].startswith("auto:") and ready["precision"] == "f32"
    kept = [t for t in ready["trials"] if t["verdict"] == "kept"]
    assert len(kept) == 1 and kept[0]["engine"].startswith(ready["engine"] + "/f32")
    assert f"engine {kept[0]['engine']} (auto:" in server.log()
    for trial in ready["trials"]:
        assert f"engine trial: {trial['engine']} {trial['cpu_ms_per_forward']} CPU ms per forward" in server.log()


def test_head_requests_are_answered_without_a_body(server) -> None:
    for path in ("/healthz", "/", "/web/app.js"):
        answer = requests.head(server.url + path, timeout=REQUEST_TIMEOUT_S)
        assert answer.status_code == 200 and answer.content == b"", path
        assert int(answer.headers["Content-Length"]) > 0


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
    # Answered while stopping, so keep-alive clients do not send their next request onto the closing socket
    # (the first may have been sent before the signal arrived).
    assert sum(a.headers.get("Connection") == "close" for a in answers) >= len(payloads) - 1


def keep_alive_connection(running: LiveServer) -> http.client.HTTPConnection:
    """One connection to ``running``: http.client reuses it and says so, where requests reconnects quietly."""
    address = urlsplit(running.url)
    return http.client.HTTPConnection(address.hostname, address.port, timeout=REQUEST_TIMEOUT_S)


def get(connection: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    connection.request("GET", path)
    answer = connection.getresponse()
    answer.read()
    return answer


def wait_for_log(running: LiveServer, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in running.log():
        assert time.monotonic() < deadline, f"the server never logged {text!r}"
        time.sleep(0.05)


def test_a_request_on_a_keep_alive_connection_idle_at_sigterm_is_still_answered(tmp_path) -> None:
    with live_server(tmp_path, "--keepalive-s", "5") as running:
        connection = keep_alive_connection(running)
        try:
            get(connection, "/healthz")
            running.process.send_signal(signal.SIGTERM)
            wait_for_log(running, "stopping:", REQUEST_TIMEOUT_S)  # the worker stops; the connection is idle
            answer = get(connection, "/healthz")
        finally:
            connection.close()
        assert running.process.wait(timeout=60) == 0
    assert answer.status == 200 and answer.getheader("Connection") == "close"


def test_back_to_back_keep_alive_clients_lose_no_request_when_the_worker_stops(tmp_path) -> None:
    """Every answer says truthfully whether its connection stays open, wherever the signal falls: cheap requests
    keep many answers on their way at every instant, and each round stops the worker among them."""
    for _ in range(STOP_ROUNDS):
        with live_server(tmp_path) as running:
            problems = stop_under_back_to_back_load(running)
            assert running.process.wait(timeout=60) == 0
        assert problems == []
        assert "closed unfinished at shutdown" not in running.log()  # no connection left waiting for nothing


def stop_under_back_to_back_load(running: LiveServer) -> list[str]:
    """SIGTERM while users each send /healthz back to back on a keep-alive connection, until an answer says
    Connection: close; returns what went wrong for them. The signal comes once every user has its connection."""
    problems: list[str] = []
    connected = threading.Semaphore(0)
    answered = itertools.count(1)
    enough = threading.Event()

    def user() -> None:
        with requests.Session() as session:
            for sent in itertools.count(1):
                try:
                    answer = session.get(running.url + "/healthz", timeout=REQUEST_TIMEOUT_S)
                except requests.RequestException as exc:
                    problems.append(repr(exc))
                    return
                if answer.status_code != 200:
                    problems.append(f"HTTP {answer.status_code}")
                    return
                if sent == 1:
                    connected.release()
                if next(answered) >= ANSWERS_BEFORE_STOP:
                    enough.set()
                if answer.headers.get("Connection") == "close":
                    return

    with ThreadPoolExecutor(max_workers=BACK_TO_BACK_USERS) as pool:
        users = [pool.submit(user) for _ in range(BACK_TO_BACK_USERS)]
        for _ in users:
            assert connected.acquire(timeout=REQUEST_TIMEOUT_S), problems
        assert enough.wait(REQUEST_TIMEOUT_S), problems
        running.process.send_signal(signal.SIGTERM)
    for done in users:
        done.result()  # a user that raised is a fault of the test, not of the server
    return problems


def test_hypercorn_hears_of_the_stop_once_the_answers_promising_keep_alive_are_out() -> None:
    async def scenario() -> None:
        terminated = EventWrapper()
        stopping = Stopping(terminated)
        sent = asyncio.Event()

        async def answer_being_sent() -> None:
            with stopping.answer(keep_alive=True) as keep:
                assert keep
                await sent.wait()

        sending = asyncio.create_task(answer_being_sent())
        await asyncio.sleep(0)
        stop = asyncio.create_task(stopping.begin(within_s=REQUEST_TIMEOUT_S))
        await asyncio.sleep(STOP_WAIT_S)
        assert not terminated.is_set()
        with stopping.answer(keep_alive=True) as keep:
            assert not keep  # an answer begun after the signal says Connection: close
        sent.set()
        await asyncio.gather(sending, stop)
        assert terminated.is_set()

    asyncio.run(scenario())


def test_an_answer_that_is_never_taken_holds_the_stop_no_longer_than_its_bound() -> None:
    async def scenario() -> float:
        terminated = EventWrapper()
        stopping = Stopping(terminated)
        with stopping.answer(keep_alive=True):
            started = time.monotonic()
            await stopping.begin(within_s=STOP_WAIT_S)
            assert terminated.is_set()
            return time.monotonic() - started

    assert asyncio.run(scenario()) >= STOP_WAIT_S


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


def test_openvino_service_says_its_engine_and_answers_as_opencv(tmp_path, converted_model, detector, images) -> None:
    with live_server(tmp_path, "--engine", "openvino") as running:
        ready = requests.get(running.url + "/readyz", timeout=5).json()
        assert (ready["engine"], ready["precision"]) == ("openvino", "f32")
        assert "engine openvino/f32 (set)" in running.log()
        for path in images[:4]:
            answer = post(running.url, request_body(path, path.name)).json()
            expected = response_body(path.name, detector.detect(decode_image(path.read_bytes())))
            assert_same_objects(answer["objects"], expected["objects"], path.name)


def test_serving_openvino_without_the_converted_model_fails_fast_saying_what_to_run(tmp_path, model_files) -> None:
    for source in (model_files.cfg, model_files.weights, model_files.names):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "clouddetect", "serve", "--port", "5999", "--model-dir", str(tmp_path),
         "--engine", "openvino"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "clouddetect model convert" in result.stderr and "Traceback" not in result.stderr


def test_a_precision_the_cpu_lacks_is_refused_at_start(tmp_path, converted_model) -> None:
    """A CPU without BF16, made with OpenVINO's and oneDNN's own caps (both must be set) on this one."""
    capped = {**os.environ, "OV_CPU_MAX_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    probe = [sys.executable, "-c",
             "from clouddetect.engines.openvino import cpu_capabilities; print(*cpu_capabilities())"]
    if "BF16" in subprocess.run(probe, capture_output=True, text=True, env=capped, check=True).stdout.split():
        pytest.skip("this OpenVINO does not honour OV_CPU_MAX_ISA")
    result = subprocess.run(
        [sys.executable, "-m", "clouddetect", "serve", "--host", "127.0.0.1", "--port", str(free_port()),
         "--engine", "openvino", "--precision", "bf16"],
        capture_output=True, text=True, timeout=60, env=capped,
    )
    assert result.returncode != 0
    assert "precision bf16 is refused: this CPU does not run BF16 natively" in result.stderr


SLOW_CLIENTS_PER_KIND = 1000
SLOW_HEADER_TIMEOUT_S = 4.0
SLOW_BODY_TIMEOUT_S = 6.0
PIPELINED_ANSWERS = 16
RSS_GROWTH_LIMIT_MIB = 128


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def test_slow_clients_are_cut_off_while_honest_requests_are_answered(tmp_path, images) -> None:
    """1,000 connections trickling bodies and 1,000 holding half-sent headers hold no thread and no admission slot.

    Honest requests keep their normal answers meanwhile; every slow client is cut off at its deadline, answered
    408 when its headers had arrived, and logged once; the worker's memory stays bounded.
    """
    flags = ("--header-timeout-s", str(SLOW_HEADER_TIMEOUT_S), "--body-timeout-s", str(SLOW_BODY_TIMEOUT_S))
    with live_server(tmp_path, *flags) as running:
        payload = request_body(images[1], "honest")
        expected = post(running.url, payload).json()
        idle_mib = rss_mib(running.process.pid)
        result = attack(running.url, SLOW_CLIENTS_PER_KIND, payload, lambda: rss_mib(running.process.pid),
                        SLOW_BODY_TIMEOUT_S)
        print(f"\nloopback: {result.summary()} (idle {idle_mib:.0f} MiB)")
        assert post(running.url, payload).json() == expected
    assert_honest_answered_and_slow_cut_off(result, expected, SLOW_HEADER_TIMEOUT_S, SLOW_BODY_TIMEOUT_S)
    log = running.log()
    assert log.count("too slow: headers not complete") == SLOW_CLIENTS_PER_KIND
    assert log.count("body bytes in") == SLOW_CLIENTS_PER_KIND
    assert result.honest.peak_mib - idle_mib < RSS_GROWTH_LIMIT_MIB, (idle_mib, result.honest.peak_mib)


def test_bodies_arriving_past_their_byte_bound_are_503(tmp_path, images) -> None:
    """Bodies still arriving hold at most max_receiving_body_bytes; past it a body is read, not kept, and refused."""
    limit = 400_000
    flags = ("--max-body-bytes", str(limit), "--max-receiving-body-bytes", str(limit), "--retry-after-s", "2")
    with live_server(tmp_path, *flags) as running, socket.create_connection(("127.0.0.1", running.port)) as hog:
        start, _drip = first_bytes("body", limit)
        hog.sendall(start + b" " * (limit - 1))  # all but one byte: held until its deadline
        time.sleep(1.0)
        with requests.Session() as session:
            refused = post_with(session, running.url, request_body(images[1]))
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
            assert refused.json()["error"]["code"] == "overloaded" and "Connection" not in refused.headers
            hog.close()
            time.sleep(1.0)
            assert post_with(session, running.url, request_body(images[1])).status_code == 200


def test_connections_past_the_limit_are_closed_at_once(tmp_path, images) -> None:
    with live_server(tmp_path, "--max-connections", "4", "--keepalive-s", "2") as running:
        held = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(4)]
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", running.port)) as extra:
            extra.settimeout(5)
            assert extra.recv(1) == b""
        for sock in held:
            sock.close()
        time.sleep(0.5)
        assert post(running.url, request_body(images[1])).status_code == 200
    assert "refused: 4 connections open already" in running.log()


def test_several_workers_serve_and_stop_cleanly(tmp_path, images) -> None:
    with live_server(tmp_path, "--workers", "2") as running:
        deadline = time.monotonic() + 60
        while running.log().count("model warmed up; ready") < 2:  # each worker turns ready on its own
            assert time.monotonic() < deadline, running.log()
            time.sleep(0.1)
        payloads = [request_body(path) for path in images[:4]]
        with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
            answers = list(pool.map(lambda p: post(running.url, p), payloads))
        assert [a.status_code for a in answers] == [200] * len(payloads)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=60) == 0


def test_an_unread_body_gives_its_connection_back(tmp_path, images) -> None:
    """A body refused unread (here: over max_body_bytes) keeps arriving; the connection must still close after the
    answer and free its place, however much the client sends."""
    with live_server(tmp_path, "--max-connections", "1", "--max-body-bytes", "300000",
                     "--max-receiving-body-bytes", "300000") as running:
        for _ in range(3):
            # The one place must be free: the server must have seen the last client close (the readiness check's
            # too, which had just closed when the server was found ready).
            time.sleep(CONNECTION_CLOSE_SEEN_S)
            with socket.create_connection(("127.0.0.1", running.port)) as sock:
                start, _drip = first_bytes("body", 50_000_000)
                sock.sendall(start)
                with contextlib.suppress(OSError):  # the server may answer and close before taking it all
                    sock.sendall(b" " * 2_000_000)
                sock.settimeout(10)
                # The server closes with the body unread, which may reset the connection before the 413 is read.
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(4096).startswith(b"HTTP/1.1 413")
        time.sleep(CONNECTION_CLOSE_SEEN_S)
        assert post(running.url, request_body(images[1])).status_code == 200


def wait_closed(sock: socket.socket, timeout_s: float) -> float:
    """The moment the server closes ``sock`` without a word."""
    sock.settimeout(timeout_s)
    assert sock.recv(1) == b""
    return time.monotonic()


def test_an_idle_connection_and_one_with_half_its_headers_have_their_own_deadlines(tmp_path) -> None:
    keepalive_s, header_timeout_s = 1.0, 3.0
    flags = ("--keepalive-s", str(keepalive_s), "--header-timeout-s", str(header_timeout_s))
    with live_server(tmp_path, *flags) as running:
        started = time.monotonic()  # the server's clocks for both connections start later
        with socket.create_connection(("127.0.0.1", running.port)) as idle, \
                socket.create_connection(("127.0.0.1", running.port)) as half:
            half.sendall(first_bytes("headers")[0])
            assert keepalive_s <= wait_closed(idle, header_timeout_s) - started < header_timeout_s
            assert header_timeout_s <= wait_closed(half, 2 * header_timeout_s) - started
    assert running.log().count("too slow: headers not complete within 3.0 s") == 1


def test_a_client_that_stops_reading_answers_is_cut_off_at_the_send_deadline(tmp_path) -> None:
    send_timeout_s = 2.0
    asset = b"GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: test\r\n\r\n"  # ~1 MB each
    with live_server(tmp_path, "--send-timeout-s", str(send_timeout_s)) as running:
        with socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window: the server must wait
            reader.connect(("127.0.0.1", running.port))
            reader.sendall(asset * PIPELINED_ANSWERS)  # far more than the kernel's buffers hold, never read
            wait_for_log(running, "the answer was not taken within 2.0 s", send_timeout_s + CUT_OFF_SLACK_S)
        assert requests.get(running.url + "/healthz", timeout=REQUEST_TIMEOUT_S).status_code == 200


def test_a_keep_alive_connection_closes_after_its_last_request(tmp_path) -> None:
    with live_server(tmp_path, "--max-requests-per-connection", "2") as running:
        connection = keep_alive_connection(running)
        try:
            first, last = get(connection, "/healthz"), get(connection, "/healthz")
        finally:
            connection.close()
    assert first.getheader("Connection") != "close" and last.getheader("Connection") == "close"
