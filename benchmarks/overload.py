"""Goodput of one pod past its capacity: saturation, then 10x and 30x as many back-to-back clients.

``clouddetect serve`` with its default settings runs in a pod's limits (0.5 CPU, 512 MiB). Each phase runs that many
clients, each sending the test images one after another with no pause (a refused client comes straight back, as
a naive client does), each waiting ``--timeout-s`` for an answer and sending no ``X-Request-Timeout``. Per phase it
prints: correct answers that reached their client in time, per second, and as a ratio to the saturation phase's
(the goodput ratio); refusals (503) per second and their median latency; client timeouts; the server's CPU time and
the share of it not spent on answers (refusing and dropping: CPU seconds beyond answers x the saturation phase's CPU
per answer); the worker's peak RSS. Then whether the server still answers ``/healthz``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
from engines import server_cpu_s
from pod_limit import MIB, PodLimit, limited_server, pod_limit
from service_vs_raw import worker_peak_rss_mib

from clouddetect.images import default_folder, image_files
from clouddetect.verdicts import ENDPOINT, response_problem

READY_TIMEOUT_S = 120.0


@dataclass
class Tally:
    """What the clients of one phase saw, shared by their threads."""

    answers: int = 0  # correct answers within the timeout
    refusals: list[float] = field(default_factory=list)  # latency of each 503
    timeouts: int = 0
    other: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_other(self, kind: str) -> None:
        with self.lock:
            self.other[kind] = self.other.get(kind, 0) + 1


def client(url: str, bodies: list[bytes], timeout_s: float, until: float, tally: Tally) -> None:
    """One back-to-back client until ``until``; counts only what it saw before its own timeout."""
    with requests.Session() as session:
        for body in itertools.cycle(bodies):
            if time.monotonic() >= until:
                return
            request_id = str(uuid.uuid4())
            started = time.monotonic()
            try:
                response = session.post(url, data=body.replace(b"ID", request_id.encode(), 1), timeout=timeout_s,
                                        headers={"Content-Type": "application/json"})
            except requests.Timeout:
                with tally.lock:
                    tally.timeouts += 1
                continue
            except requests.RequestException as exc:
                tally.add_other(type(exc).__name__)
                continue
            latency_s = time.monotonic() - started
            if response.status_code == 503:
                with tally.lock:
                    tally.refusals.append(latency_s)
            elif response.status_code == 200 and latency_s <= timeout_s and response_problem(
                    response.json(), request_id) is None:
                with tally.lock:
                    tally.answers += 1
            else:
                tally.add_other(f"HTTP {response.status_code}")


@dataclass(frozen=True)
class Phase:
    clients: int
    seconds: float
    tally: Tally
    cpu_s: float
    wall_s: float  # until the last client's last request ended
    peak_rss_mib: float | None  # None: the server was killed

    @property
    def goodput(self) -> float:
        return self.tally.answers / self.seconds


def run_phase(url: str, bodies: list[bytes], clients: int, seconds: float, timeout_s: float, pid: int) -> Phase:
    tally = Tally()
    started = time.monotonic()
    until = started + seconds
    cpu_before = server_cpu_s(pid)
    threads = [threading.Thread(target=client, args=(url + ENDPOINT, bodies, timeout_s, until, tally), daemon=True)
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # each ends by its deadline, or after its last request's timeout
    try:
        cpu_s, peak = server_cpu_s(pid) - cpu_before, worker_peak_rss_mib(pid)
    except (OSError, ValueError):  # its worker, or the server itself, is gone
        cpu_s, peak = float("nan"), None
    return Phase(clients, seconds, tally, cpu_s, time.monotonic() - started, peak)


def report(name: str, phase: Phase, saturation: Phase | None) -> None:
    refusals = phase.tally.refusals
    base = saturation or phase
    cpu_per_answer = base.cpu_s / max(base.tally.answers, 1)
    not_answers = max(phase.cpu_s - phase.tally.answers * cpu_per_answer, 0.0) / max(phase.cpu_s, 1e-9)
    print(f"{name}: {phase.clients} clients for {phase.seconds:.0f} s: {phase.goodput:.2f} answers in time/s "
          f"({phase.goodput / base.goodput:.2f}x saturation); {len(refusals) / phase.seconds:.1f} refusals/s, median "
          f"{statistics.median(refusals) * 1000 if refusals else 0:.1f} ms; {phase.tally.timeouts} client timeouts; "
          f"other {json.dumps(phase.tally.other)}; server CPU {phase.cpu_s / phase.wall_s:.2f} cores, "
          f"{not_answers:.0%} of it not on answers; "
          + (f"worker peak RSS {phase.peak_rss_mib:.0f} MiB" if phase.peak_rss_mib else "SERVER KILLED"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--port", type=int, default=5098)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="each client's wait for an answer")
    parser.add_argument("--saturation-clients", type=int, default=4)
    parser.add_argument("--saturation-s", type=float, default=30.0)
    parser.add_argument("--overload-clients", default="300,900", help="comma-separated, ~10x and ~30x a pod's")
    parser.add_argument("--overload-s", type=float, default=60.0)
    args = parser.parse_args()
    bodies = [json.dumps({"id": "ID", "image": base64.b64encode(p.read_bytes()).decode()}).encode()
              for p in image_files(args.images)]
    url = f"http://127.0.0.1:{args.port}"
    with pod_limit() as limit, limited_server(limit, args.port, READY_TIMEOUT_S) as server:
        print(f"machine: {os.cpu_count()} cores; server limits: {limit.description}; client timeout "
              f"{args.timeout_s:g} s, no X-Request-Timeout, no pause after a refusal", flush=True)
        saturation = run_phase(url, bodies, args.saturation_clients, args.saturation_s, args.timeout_s, server.pid)
        report("saturation", saturation, None)
        for clients in (int(c) for c in args.overload_clients.split(",")):
            phase = run_phase(url, bodies, clients, args.overload_s, args.timeout_s, server.pid)
            report("overload", phase, saturation)
            if phase.peak_rss_mib is None:
                return
        alive = requests.get(url + "/healthz", timeout=args.timeout_s).status_code
        print(f"after: /healthz {alive}; server still running: {server.poll() is None}; worker peak RSS "
              f"{worker_peak_rss_mib(server.pid):.0f} MiB (libraries' pages included); {cgroup_memory(limit)}")


def cgroup_memory(limit: PodLimit) -> str:
    """The memory cgroup's own peak (what its limit applies to) and how often it hit the limit."""
    for group in limit.cgroups:
        if (group / "memory.max_usage_in_bytes").exists():
            peak = int((group / "memory.max_usage_in_bytes").read_text()) / MIB
            hits = int((group / "memory.failcnt").read_text())
            return f"cgroup peak {peak:.0f} MiB of {limit.memory_bytes // MIB} MiB, limit reached {hits} times"
    return "no memory cgroup"


if __name__ == "__main__":
    main()
