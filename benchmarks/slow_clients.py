"""Honest requests' latency and the worker's memory while thousands of slow clients hold connections open.

``clouddetect serve`` with its default settings runs under the pod's 0.5-CPU limit. For each level, that many slow
clients (half never finishing their headers, half trickling an image-sized body one byte every 2 s, each reconnecting
as soon as the server cuts it off) are connected, then honest requests are sent one after another with real images.
Prints per level: the honest latency (median, p95, max) and answers, the connections the worker really holds, its
RSS now and at peak, and how often the slow clients were cut off. Level 0 is the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import requests
from pod_limit import limited_server, pod_limit
from service_vs_raw import worker_peak_rss_mib

from clouddetect.client import detect_one
from clouddetect.images import default_folder, image_files
from clouddetect.server.workers import raise_open_files_limit

# The slow clients are the tests' own, so that the benchmark and the tests trickle alike.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))
from trickling_clients import keep_trickling  # noqa: E402

from clouddetect.verdicts import ENDPOINT

READY_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0
HELD_SHARE = 0.95  # the level counts as reached once the worker holds this share of its slow connections


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _crowd(port: int, count: int, interval_s: float, control: Connection) -> None:
    """The slow clients' process, so they do not take the honest client's GIL; runs until told to stop on
    ``control``, then sends back how often the clients were cut off."""
    raise_open_files_limit(count * 2 + 256)  # cut-off clients reconnect while their old sockets close

    async def crowd() -> int:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(target=lambda: (control.recv(), loop.call_soon_threadsafe(stopping.set)), daemon=True).start()
        kinds = itertools.islice(itertools.cycle(("headers", "body")), count)
        cut_offs = await asyncio.gather(*(keep_trickling(kind, "127.0.0.1", port, interval_s, stopping)
                                          for kind in kinds))
        await stopping.wait()  # with no clients at all, too
        return sum(cut_offs)

    control.send(asyncio.run(crowd()))


@contextmanager
def slow_crowd(port: int, count: int, interval_s: float) -> Iterator[list[int]]:
    """``count`` slow clients, half of each kind, in a process of their own; yields their cut-offs at the end."""
    cut_offs: list[int] = []
    control, their_control = multiprocessing.Pipe()
    process = multiprocessing.Process(target=_crowd, args=(port, count, interval_s, their_control), name="slow-clients")
    process.start()
    try:
        yield cut_offs
    finally:
        control.send("stop")
        cut_offs.append(control.recv())
        process.join()


def wait_until_held(pid: int, connections: int, baseline_files: int) -> int:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while time.monotonic() < deadline:
        held = open_files(pid) - baseline_files
        if held >= connections * HELD_SHARE:
            return held
        time.sleep(0.2)
    raise TimeoutError(f"the worker holds {open_files(pid) - baseline_files} of {connections} slow connections")


def honest_latencies(url: str, files: list[Path], requests_count: int) -> tuple[list[float], dict[int | None, int]]:
    latencies, statuses = [], []
    with requests.Session() as session:
        for path in itertools.islice(itertools.cycle(files), requests_count):
            outcome = detect_one(session, url + ENDPOINT, path, REQUEST_TIMEOUT_S)
            latencies.append(outcome.latency_s)
            statuses.append(outcome.status)
    return latencies, {status: statuses.count(status) for status in set(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--levels", default="0,1000,4000", help="comma-separated numbers of slow connections")
    parser.add_argument("--honest-requests", type=int, default=20, help="sent one after another per level")
    parser.add_argument("--interval-s", type=float, default=2.0, help="time between a slow client's bytes")
    parser.add_argument("--settle-s", type=float, default=12.0,
                        help="wait once the slow clients are held, so their cut-offs and reconnections are measured")
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=5094)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    files = image_files(args.images)
    url = f"http://127.0.0.1:{args.port}"
    # Each slow client cut off is a warning in the log: thousands of lines, so only errors are shown here.
    with pod_limit(args.cpus) as limit, limited_server(limit, args.port, READY_TIMEOUT_S, log_level="error") as server:
        print(f"limit: {limit.description}; honest requests per level: {args.honest_requests}, one at a time; "
              f"slow clients send a byte every {args.interval_s} s and reconnect when cut off", flush=True)
        baseline_files = open_files(server.pid)
        for level in levels:
            with slow_crowd(args.port, level, args.interval_s) as cut_offs:
                held = wait_until_held(server.pid, level, baseline_files) if level else 0
                time.sleep(args.settle_s if level else 0)
                latencies, statuses = honest_latencies(url, files, args.honest_requests)
                now_mib = rss_mib(server.pid)
            quantiles = statistics.quantiles(latencies, n=20, method="inclusive")
            print(f"{level:5d} slow connections (worker holds {held:4d}): honest latency median "
                  f"{statistics.median(latencies) * 1000:6.0f} ms, p95 {quantiles[-1] * 1000:6.0f} ms, "
                  f"max {max(latencies) * 1000:6.0f} ms, answers {statuses}; worker RSS {now_mib:.1f} MiB, "
                  f"peak so far {worker_peak_rss_mib(server.pid):.1f} MiB; slow clients cut off {sum(cut_offs)} times",
                  flush=True)


if __name__ == "__main__":
    main()
