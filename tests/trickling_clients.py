"""Clients that send their requests too slowly, as a broken or hostile client would, to show the service holds.

A header trickler sends a request line and then one more header line now and then, never ending its headers; a
body trickler sends complete headers announcing an image-sized body and then one byte of it now and then. Both
stop when the server answers or closes the connection. Thousands fit in one asyncio loop on a few megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from clouddetect.verdicts import ENDPOINT

REQUEST_HEAD = f"POST {ENDPOINT} HTTP/1.1\r\nHost: clouddetect\r\nContent-Type: application/json\r\n".encode()
HEADER_DRIP = b"X-Slow: 1\r\n"
BODY_DRIP = b" "
# A 150 KB photo in base64, the size of a typical request.
IMAGE_BODY_BYTES = 200_000
READ_BYTES = 4096


@dataclass(frozen=True)
class SlowOutcome:
    kind: str  # "headers" or "body"
    held_s: float  # from the connection's opening until the server answered or closed it
    answer: bytes  # what the server sent before closing; b"" when it closed without a word

    @property
    def status(self) -> int | None:
        parts = self.answer.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def first_bytes(kind: str, body_bytes: int = IMAGE_BODY_BYTES) -> tuple[bytes, bytes]:
    """What a slow client of ``kind`` sends first, and what it then sends one piece at a time."""
    if kind == "headers":
        return REQUEST_HEAD, HEADER_DRIP
    return REQUEST_HEAD + f"Content-Length: {body_bytes}\r\n\r\n".encode(), BODY_DRIP


async def trickle(kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, interval_s: float,
                  opened: float) -> SlowOutcome:
    """Send a request of ``kind`` slowly on an open connection until the server answers or closes it."""
    start, drip = first_bytes(kind)
    answer = b""
    try:
        writer.write(start)
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(READ_BYTES), interval_s)
            except TimeoutError:
                writer.write(drip)
                continue
            if not chunk:
                break
            answer += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
    return SlowOutcome(kind, time.monotonic() - opened, answer)


async def keep_trickling(kind: str, host: str, port: int, interval_s: float, stop: asyncio.Event) -> int:
    """One slow client that reconnects whenever the server cuts it off, until ``stop``; returns its cut-offs."""
    cut_offs = 0
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(interval_s)
            continue
        session = asyncio.ensure_future(trickle(kind, reader, writer, interval_s, time.monotonic()))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({session, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if session.done():
            cut_offs += 1
        else:
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
    return cut_offs

