"""Capacity of one local server with the default settings under a pod's 0.5-CPU limit, found by the lab.

Starts ``clouddetect serve`` inside the CPU limit, runs ``clouddetect lab run --url ...`` against it (the load
generator outside the limit), and prints the most users served with no failed request, with their requests/s and
mean response time, and the exact lab command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from cpu_limit import cpu_limit, limited_server

from clouddetect.images import default_folder

READY_TIMEOUT_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=5097)
    parser.add_argument("--out", type=Path, default=Path("results") / "bench-lab-capacity",
                        help="experiment directory (an existing one resumes)")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    lab = [sys.executable, "-m", "clouddetect", "lab", "run", "--url", url, "--out", str(args.out),
           "--images", str(args.images), "--timeout-s", str(args.timeout_s), "--hold-s", str(args.hold_s),
           "--repeats", str(args.repeats)]
    with cpu_limit(args.cpus) as limit:
        print(f"machine: {os.cpu_count()} cores; server limit: {limit.description}", flush=True)
        with limited_server(limit, args.port, READY_TIMEOUT_S):
            print(f"running: {shlex.join(lab)}", flush=True)
            subprocess.run(lab, check=True)
    for run in json.loads((args.out / "runs.json").read_text()):
        print(f"repeat {run['repeat']}: max users with no failure (timeout {run['timeout_s']:g} s): "
              f"{run['max_users']}; {run['rps']:.2f} req/s; mean response time {run['avg_ms']:.0f} ms "
              f"(median {run['median_ms']:.0f}, p95 {run['p95_ms']:.0f}); users at first failure while ramping: "
              f"{run['breaking_users']}; confirmations tried: {run['confirmed_users_tried']}")


if __name__ == "__main__":
    main()
