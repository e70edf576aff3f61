"""Measures a simulated link as a client behind it sees it: the round trip of small exchanges, throughput each way.

The client's sockets are made inside the link's namespace (``setns`` on the calling thread, then back), so their
traffic takes the link's whole path: the namespace's veth and its ``tbf``, the host end's ``tbf``, the redirect and
the delay relay, to a probe server on this host's loopback. Throughput is counted from the first byte received to
the last, so the round trip does not dilute it.
"""

from __future__ import annotations

import ctypes
import os
import socket
import socketserver
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
ECHO, UPLOAD, DOWNLOAD = b"e", b"u", b"d"
COUNT = struct.Struct("!Q")
UPLOAD_REPORT = struct.Struct("!Qd")  # bytes counted after the first chunk, seconds from the first to the last
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProbeSettings:
    transfer_bytes: int
    pings: int
    timeout_s: float


@dataclass(frozen=True)
class LinkFigures:
    rtt_ms: float  # median round trip of one-byte exchanges on an open connection
    first_answer_ms: float  # connect and a first one-byte exchange on a fresh connection: two round trips on a WAN
    upload_mbit: float
    download_mbit: float
    transfer_bytes: int


def _setns(libc: ctypes.CDLL, fd: int) -> None:
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def in_namespace(name: str) -> Iterator[None]:
    """Sockets made inside this block belong to network namespace ``name``; only this thread moves."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{name}") as target:
        _setns(libc, target.fileno())
        try:
            yield
        finally:
            _setns(libc, own.fileno())


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _drain(sock: socket.socket) -> tuple[int, float]:
    """Reads to end of stream: the bytes after the first chunk and the time from the first chunk to the last."""
    first_at = last_at = 0.0
    counted = 0
    while chunk := sock.recv(CHUNK_BYTES):
        last_at = time.monotonic()
        if first_at:
            counted += len(chunk)
        else:
            first_at = last_at
    return counted, last_at - first_at


class _ProbeHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = sock.recv(1)
        if mode == ECHO:
            while byte := sock.recv(1):
                sock.sendall(byte)
        elif mode == UPLOAD:
            sock.sendall(UPLOAD_REPORT.pack(*_drain(sock)))
        elif mode == DOWNLOAD:
            (size,) = COUNT.unpack(_receive_exactly(sock, COUNT.size))
            block = bytes(CHUNK_BYTES)
            for start in range(0, size, CHUNK_BYTES):
                sock.sendall(block[:min(CHUNK_BYTES, size - start)])


class _ProbeServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def probe_server() -> Iterator[int]:
    """An echo / sink / source server on 127.0.0.1; yields its port."""
    with _ProbeServer(("127.0.0.1", 0), _ProbeHandler) as server:
        thread = threading.Thread(target=server.serve_forever, name="link-probe", daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join()


def _mbit(size: int, seconds: float) -> float:
    return size * 8 / seconds / 1e6 if seconds > 0 else float("inf")


def measure(namespace: str, host_address: str, settings: ProbeSettings) -> LinkFigures:
    """Round trip and throughput from a client in ``namespace`` to ``host_address``, which stands for loopback."""
    with probe_server() as port:
        with in_namespace(namespace):
            echo, upload, download = (socket.socket() for _ in range(3))
        with echo, upload, download:
            for sock in (echo, upload, download):
                sock.settimeout(settings.timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.monotonic()
            echo.connect((host_address, port))
            echo.sendall(ECHO + b"x")
            _receive_exactly(echo, 1)
            first_answer_s = time.monotonic() - started
            round_trips = []
            for _ in range(settings.pings):
                sent_at = time.monotonic()
                echo.sendall(b"x")
                _receive_exactly(echo, 1)
                round_trips.append(time.monotonic() - sent_at)

            upload.connect((host_address, port))
            upload.sendall(UPLOAD)
            block = bytes(CHUNK_BYTES)
            for start in range(0, settings.transfer_bytes, CHUNK_BYTES):
                upload.sendall(block[:min(CHUNK_BYTES, settings.transfer_bytes - start)])
            upload.shutdown(socket.SHUT_WR)
            up_bytes, up_s = UPLOAD_REPORT.unpack(_receive_exactly(upload, UPLOAD_REPORT.size))

            download.connect((host_address, port))
            download.sendall(DOWNLOAD + COUNT.pack(settings.transfer_bytes))
            download.shutdown(socket.SHUT_WR)
            down_bytes, down_s = _drain(download)
    return LinkFigures(
        rtt_ms=statistics.median(round_trips) * 1000, first_answer_ms=first_answer_s * 1000,
        upload_mbit=_mbit(up_bytes, up_s), download_mbit=_mbit(down_bytes, down_s),
        transfer_bytes=settings.transfer_bytes,
    )
