"""Peak memory of one serving worker as more clients connect at once, against its idle memory in the same run.

Each level sends that many requests at once (the test images, repeated as needed) to ``clouddetect serve`` with
its default settings under the pod's 0.5-CPU limit; requests past ``max_waiting_requests`` are refused with 503,
so the peak should level off however many clients come. Prints the worker's peak RSS per level.

``--variants`` runs the same levels again with some settings changed, each on a fresh server, and prints each
variant's peaks against the defaults' of the same run, e.g. ``--variants winograd=true,malloc_arenas=16``.
"""

from __future__ import annotations

import argparse
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import requests
from pod_limit import limited_server, pod_limit
from service_vs_raw import worker_peak_rss_mib

from clouddetect.client import detect_one
from clouddetect.config import ENV_PREFIX, Settings
from clouddetect.images import default_folder, image_files
from clouddetect.verdicts import ENDPOINT

READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 300.0


def send_at_once(url: str, files: list[Path], clients: int) -> dict[int | None, int]:
    """Statuses of ``clients`` requests sent together, one connection each."""
    batch = list(itertools.islice(itertools.cycle(files), clients))

    def one(path: Path) -> int | None:
        with requests.Session() as session:
            return detect_one(session, url + ENDPOINT, path, REQUEST_TIMEOUT_S).status

    with ThreadPoolExecutor(max_workers=clients) as pool:
        statuses = list(pool.map(one, batch))
    return {status: statuses.count(status) for status in set(statuses)}


def peaks(url: str, files: list[Path], levels: list[int], server_pid: int, idle_mib: float) -> list[float]:
    """The worker's peak RSS after each level of simultaneous clients, printed as it goes."""
    found = []
    for clients in levels:
        statuses = send_at_once(url, files, clients)
        peak_mib = worker_peak_rss_mib(server_pid)
        print(f"{clients:4d} clients at once: answers {dict(sorted(statuses.items(), key=str))}; "
              f"peak RSS {peak_mib:.1f} MiB ({peak_mib / idle_mib:.2f}x idle)")
        found.append(peak_mib)
    return found


def variant_env(variant: str) -> dict[str, str]:
    name, _, value = variant.partition("=")
    if name not in {f.name for f in fields(Settings)} or not value:
        raise SystemExit(f"--variants: {variant!r} is not SETTING=VALUE")
    return {ENV_PREFIX + name.upper(): value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--clients", default="1,64,192,384", help="comma-separated levels of simultaneous clients")
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=5096)
    parser.add_argument("--variants", default="", help="comma-separated SETTING=VALUE, each run beside the defaults")
    args = parser.parse_args()
    files = image_files(args.images)
    url = f"http://127.0.0.1:{args.port}"
    levels = [int(level) for level in args.clients.split(",")]
    runs = [("defaults", {})] + [(v, variant_env(v)) for v in args.variants.split(",") if v]
    results = {}
    with pod_limit(args.cpus) as limit:
        for name, env in runs:
            with limited_server(limit, args.port, READY_TIMEOUT_S, env) as server:
                idle_mib = worker_peak_rss_mib(server.pid)
                print(f"{name}; limit: {limit.description}; idle worker peak RSS after warm-up: {idle_mib:.1f} MiB")
                results[name] = peaks(url, files, levels, server.pid, idle_mib)
    for name, found in list(results.items())[1:]:
        ratios = ", ".join(f"{c} clients {p:.0f} vs {d:.0f} MiB ({p / d:.2f}x)"
                           for c, p, d in zip(levels, found, results["defaults"], strict=True))
        print(f"{name} against the defaults: {ratios}")


if __name__ == "__main__":
    main()
