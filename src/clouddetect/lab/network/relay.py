"""A TCP relay that delays every byte by half a round trip each way: the delay of a WAN link, in user space.

This kernel has no ``netem`` qdisc, so a link's latency cannot come from the kernel; bandwidth still can (``tbf``).
The relay accepts a connection, connects on to where the client meant to go (``route``), and forwards each chunk
``rtt / 2`` after it arrived. A client's connect returns at once (the relay accepts it locally), so the one round
trip a real handshake costs is added before the first byte goes upstream: a fresh connection's first answer comes
after two round trips, as over a real link. Memory is bounded: at most ``buffer_bytes`` wait per direction of a
connection (then the relay stops reading and TCP pushes back on the sender), and at most ``max_connections``
are relayed at once (later ones wait, accepted, until a slot frees).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# getsockopt(SOL_IP, SO_ORIGINAL_DST) gives a redirected connection's destination (linux/netfilter_ipv4.h).
SO_ORIGINAL_DST = 80
SOCKADDR_IN_BYTES = 16

Address = tuple[str, int]
# Where to connect on for an accepted client socket; None refuses the connection.
Route = Callable[[socket.socket], Address | None]


@dataclass(frozen=True)
class RelaySettings:
    rtt_ms: float
    buffer_bytes: int
    read_bytes: int
    max_connections: int
    connect_timeout_s: float
    stop_timeout_s: float

    @property
    def one_way_s(self) -> float:
        return self.rtt_ms / 2000

    @property
    def handshake_s(self) -> float:
        return self.rtt_ms / 1000


def original_destination(sock: socket.socket) -> Address:
    """The address a client connected to before iptables REDIRECT sent it to the relay."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_BYTES)
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


class DelayRelay:
    """Runs in a thread of its own with its own event loop: ``start()`` returns the port it listens on."""

    def __init__(self, settings: RelaySettings, host: str, route: Route):
        self.settings = settings
        self.host = host
        self.route = route
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> int:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(self.settings.stop_timeout_s)
        return self.port

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(self.settings.stop_timeout_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.settings.stop_timeout_s)
        self._loop.close()

    def __enter__(self) -> DelayRelay:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        self._slots = asyncio.Semaphore(self.settings.max_connections)
        self._server = await asyncio.start_server(self._relay, self.host, 0, limit=self.settings.read_bytes)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        assert self._slots is not None
        usable_at = asyncio.get_running_loop().time() + self.settings.handshake_s
        try:
            async with self._slots:
                target = self.route(client_writer.get_extra_info("socket"))
                if target is None:
                    return
                try:
                    upstream_reader, upstream_writer = await asyncio.wait_for(
                        asyncio.open_connection(*target, limit=self.settings.read_bytes),
                        self.settings.connect_timeout_s)
                except (OSError, TimeoutError):
                    return
                try:
                    async with asyncio.TaskGroup() as pipes:
                        pipes.create_task(self._pipe(client_reader, upstream_writer, usable_at))
                        pipes.create_task(self._pipe(upstream_reader, client_writer, usable_at))
                except* (OSError, ConnectionError):
                    pass  # one side reset the connection: both are closed below
                finally:
                    upstream_writer.close()
        except asyncio.CancelledError:
            pass  # the relay is stopping; this task is its connection's last owner
        finally:
            client_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, usable_at: float) -> None:
        """Forward ``reader`` to ``writer`` with the one-way delay; end of stream is forwarded as a half-close."""
        loop = asyncio.get_running_loop()
        line = DelayLine(self.settings.buffer_bytes, self.settings.one_way_s, usable_at)

        async def receive() -> None:
            while True:
                chunk = await reader.read(self.settings.read_bytes)
                await line.put(chunk)
                if not chunk:
                    return

        async def send() -> None:
            while True:
                due, chunk = await line.first()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
                await line.release()

        async with asyncio.TaskGroup() as directions:
            directions.create_task(receive())
            directions.create_task(send())


class DelayLine:
    """Chunks waiting for their time, first in first out: at most ``capacity_bytes`` held (one chunk always fits),
    counting the chunk being sent until it is written. A chunk is due ``delay_s`` after it found room in the line,
    and not before ``not_before_s + delay_s`` (loop time)."""

    def __init__(self, capacity_bytes: int, delay_s: float, not_before_s: float):
        self.capacity_bytes = capacity_bytes
        self.delay_s = delay_s
        self.not_before_s = not_before_s
        self.held_bytes = 0
        self._chunks: deque[tuple[float, bytes]] = deque()
        self._changed = asyncio.Condition()

    async def put(self, chunk: bytes) -> None:
        async with self._changed:
            await self._changed.wait_for(
                lambda: not self._chunks or self.held_bytes + len(chunk) <= self.capacity_bytes)
            due = max(asyncio.get_running_loop().time(), self.not_before_s) + self.delay_s
            self._chunks.append((due, chunk))
            self.held_bytes += len(chunk)
            self._changed.notify_all()

    async def first(self) -> tuple[float, bytes]:
        """The oldest chunk, left in the line until ``release``."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._chunks))
            return self._chunks[0]

    async def release(self) -> None:
        async with self._changed:
            _due, chunk = self._chunks.popleft()
            self.held_bytes -= len(chunk)
            self._changed.notify_all()


def loopback_route(host_address: str, relay_port: Callable[[], int]) -> Route:
    """Connections to the host's link address go to the same port on 127.0.0.1; others go where they were sent.

    A service bound to loopback (``clouddetect serve --host 127.0.0.1``, a NodePort kube-proxy serves on
    127.0.0.1) is thus reached as ``host_address:PORT``; connecting from this host, the relay also passes through
    kube-proxy's rules for local clients. A connection to the relay's own port is refused (it would loop).
    """

    def route(sock: socket.socket) -> Address | None:
        address, port = original_destination(sock)
        if address != host_address:
            return address, port
        return None if port == relay_port() else ("127.0.0.1", port)

    return route


def fixed_route(target: Address) -> Route:
    """Every connection goes to ``target`` (a relay without iptables, e.g. in front of one server)."""
    return lambda _sock: target
