"""Capacity of one local server with the default settings in a pod's limits (0.5 CPU, 512 MiB), found by the lab.

Starts ``clouddetect serve`` inside the limits, runs ``clouddetect lab run --url ...`` against it (the load
generator outside them) into a new experiment directory, and prints each run's figures: the most users served
with no failed request (with its timeout), the response times at that load, the saturation throughput, the users
within the latency objective, how many requests were sent and judged, and how long the run took; then the serving
worker's peak RSS over the whole experiment, against the pod's memory limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from pod_limit import MIB, limited_server, pod_limit
from service_vs_raw import worker_peak_rss_mib

from clouddetect.images import default_folder

READY_TIMEOUT_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=5097)
    parser.add_argument("--out", type=Path, help="experiment directory [default: a new results/bench-lab-<UTC time>]")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("lab_flags", nargs="*", help="more `lab run` flags, after --, e.g. -- --timeout-s 5")
    args = parser.parse_args()
    out = args.out or Path("results") / datetime.now(UTC).strftime("bench-lab-%Y%m%d-%H%M%S")
    url = f"http://127.0.0.1:{args.port}"
    lab = [sys.executable, "-m", "clouddetect", "lab", "run", "--url", url, "--out", str(out),
           "--images", str(args.images), "--repeats", str(args.repeats), "--pod-cpu", str(args.cpus),
           *args.lab_flags]
    with pod_limit(args.cpus) as limit:
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
              f"server limit: {limit.description}", flush=True)
        with limited_server(limit, args.port, READY_TIMEOUT_S) as server:
            print(f"running: {shlex.join(lab)}", flush=True)
            subprocess.run(lab, check=True)
            peak_mib = worker_peak_rss_mib(server.pid)
    print(f"serving worker's peak RSS: {peak_mib:.0f} MiB ({peak_mib * MIB / limit.memory_bytes:.0%} of the "
          f"{limit.memory_bytes // MIB} MiB limit)")
    print(f"machine load average after: {os.getloadavg()[0]:.2f}")
    for run in json.loads((out / "runs.json").read_text()):
        print(f"repeat {run['repeat']}: max users with no failure (timeout {run['timeout_s']:g} s): "
              f"{run['max_users']}; mean {_s(run['avg_ms'])}, median {_s(run['median_ms'])}, p95 {_s(run['p95_ms'])}, "
              f"p99 {_s(run['p99_ms'])}; {run['rps'] or 0:.2f} req/s held; saturation {run['saturation_rps'] or 0:.2f}"
              f" req/s; users within p95 <= {run['slo_p95_s']} s: {run['slo_users']}; stable hold: {run['stable']}; "
              f"requests sent/judged {run['requests_sent']}/{run['requests_judged']}; users at first failure "
              f"while ramping: {run['breaking_users']}; confirmations tried: {run['confirmed_users_tried']}; "
              f"took {run['duration_s']:.0f} s")


def _s(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f} s"


if __name__ == "__main__":
    main()
