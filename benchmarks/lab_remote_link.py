"""What a WAN link between the load generator and the service changes in the lab's figures, measured in one run.

One local server with the default settings under a pod's 0.5-CPU limit; the lab runs against it from this host
(the baseline), then from a simulated remote client (``clouddetect lab link run``) over a link with the given round
trip and bandwidth, then over a narrow link whose bandwidth is below what the server can answer (~220 KB per
request). The three alternate, round after round, so the machine's noise falls on each alike. As root.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from pod_limit import limited_server, pod_limit

from clouddetect.images import default_folder
from clouddetect.lab.network.link import LinkSettings

READY_TIMEOUT_S = 120.0


def lab_command(url: str, out: Path, args: argparse.Namespace, location: str) -> list[str]:
    return [sys.executable, "-m", "clouddetect", "lab", "run", "--url", url, "--out", str(out),
            "--client-location", location, "--images", str(args.images), "--timeout-s", str(args.timeout_s),
            "--hold-s", str(args.hold_s), "--repeats", "1", "--progress-interval-s", "30"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=5098)
    parser.add_argument("--out", type=Path, default=Path("results") / "bench-remote-link")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--hold-s", type=float, default=20.0)
    parser.add_argument("--rtt-ms", type=float, default=LinkSettings.rtt_ms)
    parser.add_argument("--bandwidth-mbit", type=float, default=LinkSettings.bandwidth_mbit)
    parser.add_argument("--narrow-bandwidth-mbit", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    host = str(next(ipaddress.ip_network(LinkSettings.subnet).hosts()))
    links = {"local": None, "link": args.bandwidth_mbit, "narrow": args.narrow_bandwidth_mbit}
    figures: dict[str, list[dict]] = {label: [] for label in links}
    with pod_limit(args.cpus) as limit:
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; server limit: {limit.description}",
              flush=True)
        with limited_server(limit, args.port, READY_TIMEOUT_S):
            for round_number in range(1, args.rounds + 1):
                for label, bandwidth in links.items():
                    out = args.out / f"{label}-round-{round_number}"
                    if bandwidth is None:
                        command = lab_command(f"http://127.0.0.1:{args.port}", out, args, "master")
                    else:
                        command = [sys.executable, "-m", "clouddetect", "lab", "link", "run", "--rtt-ms",
                                   str(args.rtt_ms), "--bandwidth-mbit", str(bandwidth), "--",
                                   *lab_command(f"http://{host}:{args.port}", out, args, "remote")]
                    print(f"running: {shlex.join(command)}", flush=True)
                    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                    figures[label] += json.loads((out / "runs.json").read_text())
    print(f"timeout {args.timeout_s:g} s, hold {args.hold_s:g} s; link: {args.rtt_ms:g} ms round trip at "
          f"{args.bandwidth_mbit:g} Mbit/s, narrow: the same at {args.narrow_bandwidth_mbit:g} Mbit/s")
    for label, runs in figures.items():
        for run, local in zip(runs, figures["local"], strict=True):
            print(f"{label:6}: max users {run['max_users']:3} ({run['max_users'] / local['max_users']:.2f} x local), "
                  f"{run['rps']:.2f} req/s ({run['rps'] / local['rps']:.2f} x), mean {run['avg_ms']:.0f} ms, "
                  f"median {run['median_ms']:.0f} ms, p95 {run['p95_ms']:.0f} ms")

if __name__ == "__main__":
    main()
