"""Slow clients against a running service while honest requests are timed: one attack for a server on loopback, for
the container and for the cluster's NodePort, so all three check the same thing the same way."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from trickling_clients import IMAGE_BODY_BYTES, SlowOutcome, trickle

from clouddetect.config import Settings
from clouddetect.server.workers import raise_open_files_limit
from clouddetect.verdicts import ENDPOINT

DRIP_INTERVAL_S = 1.0
HONEST_REQUESTS = 8
HONEST_TIMEOUT_S = 10.0  # "within a few seconds": an honest answer slower than this fails the test
# Cut-offs come from one event loop serving thousands of connections on a shared machine: allow this much lateness.
CUT_OFF_SLACK_S = 10.0
# Sockets the test process needs beside its slow clients.
SPARE_OPEN_FILES = 256


@dataclass(frozen=True)
class Honest:
    answers: list[requests.Response]
    latencies_s: list[float]
    peak_mib: float  # the largest memory reading taken after each answer


@dataclass(frozen=True)
class Attack:
    outcomes: list[SlowOutcome]
    honest: Honest

    def of_kind(self, kind: str) -> list[SlowOutcome]:
        return [o for o in self.outcomes if o.kind == kind]

    def summary(self) -> str:
        latencies = self.honest.latencies_s
        held = {kind: sorted(o.held_s for o in self.of_kind(kind)) for kind in ("headers", "body")}
        cut = "; ".join(f"{kind} cut after {h[0]:.1f}-{h[-1]:.1f} s" for kind, h in held.items())
        return (f"{len(self.outcomes)} slow clients; honest latency median {statistics.median(latencies):.2f} s, "
                f"max {max(latencies):.2f} s; {cut}; memory peak {self.honest.peak_mib:.0f} MiB")


def body_deadline_s(settings: Settings) -> float:
    """The time a server with ``settings`` gives a body trickler's image-sized body."""
    return min(settings.body_timeout_s,
               settings.header_timeout_s + IMAGE_BODY_BYTES / settings.min_body_rate_bytes_per_s)


def honest_requests(url: str, payload: dict[str, str], memory_mib: Callable[[], float]) -> Honest:
    """Requests one after another, each on a connection of its own (through a NodePort each may reach another pod)."""
    time.sleep(DRIP_INTERVAL_S)  # every slow client has started
    answers, latencies, peak = [], [], 0.0
    for _ in range(HONEST_REQUESTS):
        started = time.monotonic()
        answers.append(requests.post(url + ENDPOINT, json=payload, timeout=HONEST_TIMEOUT_S))
        latencies.append(time.monotonic() - started)
        peak = max(peak, memory_mib())
    return Honest(answers, latencies, peak)


async def _attack(host: str, port: int, per_kind: int, honest: Callable[[], Honest]) -> Attack:
    """``per_kind`` header tricklers and as many body tricklers, all connected first, then ``honest`` in a thread."""

    async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
        connecting = time.monotonic()  # the server's clock for this connection cannot start earlier
        reader, writer = await asyncio.open_connection(host, port)
        return reader, writer, connecting

    kinds = ["headers", "body"] * per_kind
    connections = await asyncio.gather(*(opened() for _ in kinds))
    slow = [trickle(kind, reader, writer, DRIP_INTERVAL_S, at) for kind, (reader, writer, at) in
            zip(kinds, connections, strict=True)]
    *outcomes, honest_result = await asyncio.gather(*slow, asyncio.to_thread(honest))
    return Attack(outcomes, honest_result)


def attack(url: str, per_kind: int, payload: dict[str, str], memory_mib: Callable[[], float],
           body_deadline: float) -> Attack:
    """Slow clients of both kinds on ``url`` while honest requests with ``payload`` are timed; ends when all are cut."""
    raise_open_files_limit(2 * per_kind + SPARE_OPEN_FILES)
    address = urlsplit(url)
    assert address.hostname and address.port
    limit_s = DRIP_INTERVAL_S + body_deadline + CUT_OFF_SLACK_S + HONEST_REQUESTS * HONEST_TIMEOUT_S
    return asyncio.run(asyncio.wait_for(
        _attack(address.hostname, address.port, per_kind, lambda: honest_requests(url, payload, memory_mib)), limit_s))


def assert_honest_answered_and_slow_cut_off(result: Attack, expected: dict, header_deadline_s: float,
                                            body_deadline: float) -> None:
    """Honest requests got their normal answers; each slow client was cut off at its deadline, give or take."""
    answers = result.honest.answers
    assert [a.status_code for a in answers] == [200] * HONEST_REQUESTS, result.honest.latencies_s
    assert all(a.json() == expected for a in answers)
    headers, bodies = result.of_kind("headers"), result.of_kind("body")
    assert {o.answer for o in headers} == {b""}, "half-sent headers are closed without an answer"
    assert {o.status for o in bodies} == {408}
    for group, deadline_s in ((headers, header_deadline_s), (bodies, body_deadline)):
        held = sorted(o.held_s for o in group)
        assert deadline_s - 0.1 <= held[0] and held[-1] <= deadline_s + CUT_OFF_SLACK_S, (held[0], held[-1])
