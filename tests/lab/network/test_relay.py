"""The delay relay on loopback: each exchange costs a round trip, a fresh connection two; bytes and ends pass intact."""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from clouddetect.lab.network.probe import ECHO, UPLOAD, UPLOAD_REPORT, probe_server
from clouddetect.lab.network.relay import DelayRelay, RelaySettings, fixed_route
from support import free_port

RTT_MS = 100.0
TIMEOUT_S = 10.0


def relay_settings(**changes: float) -> RelaySettings:
    values = {"rtt_ms": RTT_MS, "buffer_bytes": 1024 * 1024, "read_bytes": 64 * 1024, "max_connections": 64,
              "connect_timeout_s": 5.0, "stop_timeout_s": 5.0, **changes}
    return RelaySettings(**values)


@contextmanager
def relay_to(port: int, settings: RelaySettings) -> Iterator[tuple[str, int]]:
    with DelayRelay(settings, "127.0.0.1", fixed_route(("127.0.0.1", port))) as relay:
        yield "127.0.0.1", relay.port


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock: socket.socket, data: bytes = b"x") -> float:
    started = time.monotonic()
    sock.sendall(data)
    assert sock.recv(1) == b"x"
    return (time.monotonic() - started) * 1000


class _DigestHandler(socketserver.BaseRequestHandler):
    """Reads to the client's end of stream, then answers the SHA-256 of what it read."""

    def handle(self) -> None:
        digest = hashlib.sha256()
        while chunk := self.request.recv(65536):
            digest.update(chunk)
        self.request.sendall(digest.digest())


@pytest.fixture(scope="module")
def digest_port() -> Iterator[int]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _DigestHandler) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.server_address[1]
        server.shutdown()


def test_each_exchange_takes_one_round_trip_and_a_fresh_connection_two() -> None:
    with probe_server() as port, relay_to(port, relay_settings()) as relay, connect(relay) as sock:
        first_ms = exchange(sock, ECHO + b"x")
        round_trips = [exchange(sock) for _ in range(5)]
    # The lower bounds are the relay's promise; the upper ones only catch a relay that adds far too much.
    assert 2 * RTT_MS * 0.95 <= first_ms < 5 * RTT_MS
    assert RTT_MS * 0.95 <= statistics.median(round_trips) < 3 * RTT_MS


def test_without_delay_the_relay_adds_almost_nothing() -> None:
    with probe_server() as port, relay_to(port, relay_settings(rtt_ms=0.0)) as relay, connect(relay) as sock:
        exchange(sock, ECHO + b"x")
        assert statistics.median(exchange(sock) for _ in range(5)) < RTT_MS / 2


def test_bytes_arrive_intact_and_the_clients_end_of_stream_is_forwarded(digest_port: int) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)
    with relay_to(digest_port, relay_settings(rtt_ms=10.0)) as relay, connect(relay) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the server answers only once it has seen the end of the stream
        answer = b"".join(iter(lambda: sock.recv(64), b""))
    assert answer == hashlib.sha256(payload).digest()


def test_an_unreachable_destination_closes_the_clients_connection() -> None:
    with relay_to(free_port(), relay_settings(rtt_ms=0.0)) as relay, connect(relay) as sock:
        sock.sendall(b"hello")
        with suppress(ConnectionResetError):  # closed or reset: either way nothing comes back
            assert sock.recv(1) == b""


def test_a_connection_past_max_connections_waits_for_a_free_slot() -> None:
    settings = relay_settings(rtt_ms=0.0, max_connections=1)
    with probe_server() as port, relay_to(port, settings) as relay:
        first = connect(relay)
        exchange(first, ECHO + b"x")
        with connect(relay) as second:
            second.sendall(ECHO + b"x")
            second.settimeout(0.5)
            with pytest.raises(TimeoutError):
                second.recv(1)
            first.close()
            second.settimeout(TIMEOUT_S)
            assert second.recv(1) == b"x"


def test_a_connection_holds_at_most_buffer_bytes_each_way_so_a_round_trip_caps_its_rate() -> None:
    # 64 KiB in flight per 50 ms one way: at most ~1.3 MB/s however fast loopback is.
    buffer_bytes, rtt_ms = 64 * 1024, 100.0
    settings = relay_settings(rtt_ms=rtt_ms, buffer_bytes=buffer_bytes, read_bytes=16 * 1024)
    with probe_server() as port, relay_to(port, settings) as relay, connect(relay) as sock:
        sock.sendall(UPLOAD + bytes(2 * 1024 * 1024))
        sock.shutdown(socket.SHUT_WR)
        counted, seconds = UPLOAD_REPORT.unpack(sock.recv(UPLOAD_REPORT.size, socket.MSG_WAITALL))
    ceiling = buffer_bytes / (rtt_ms / 2000)
    assert ceiling * 0.5 < counted / seconds <= ceiling * 1.3
