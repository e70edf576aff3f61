"""The whole capacity table on the three-node test cluster: 1, 2, 4 and 8 pods, from the master and from a remote
client, repeated, then the report; the experiment's files land in ``docs/full-table/``. As root; ~75 minutes.

Eight pods of 0.5 CPU do not fit this 2-core machine beside the load generator and the control plane, so the
Deployment is applied with ``deploy/k8s/overlays/test-cluster-cpu-scaled`` (each pod's CPU scaled down, memory
512Mi as assigned) and the report's title block says so. The remote client is ``clouddetect lab link run`` (its own
network namespace, 20 ms round trip, 100 Mbit/s each way). Every run records what bound it (``lab/capacity/
evidence.py``); the report shows it beside the table. The committed copy holds ``experiment.json`` and
``runs.json`` of each set (not Locust's raw files), the report regenerated from exactly those, and its first two
pages as PNGs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from clouddetect.lab.capacity.experiment import ASSIGNMENT_PODS, CLIENT_LOCATIONS, expected_run_s
from clouddetect.lab.capacity.results import CONDITIONS_FILE, RUNS_JSON, Experiment
from clouddetect.lab.capacity.search import SearchSettings
from clouddetect.lab.network.link import LinkSettings
from clouddetect.loadtest.settings import LoadSettings

ROOT = Path(__file__).resolve().parents[1]
TEST_CLUSTER = ROOT / "scripts" / "test-cluster"
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "test-cluster-cpu-scaled"
KUBECTL = Path(sys.executable).with_name("kubectl")
IMAGE = "clouddetect:latest"
ROLLOUT_TIMEOUT_S = 600
# Scaling and waiting for the pods, per pod count and location, as measured here (8 pods: ~30 s).
SCALING_ALLOWANCE_S = 45.0
TITLE = "CloudDetect: 1, 2, 4 and 8 pods on the three-node test cluster"
PAGES = 2
PAGE_DPI = 80


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Where the experiments go [default: results/full-table-<UTC time>]")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "full-table",
                        help="Where the committed copy and the report go.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=10.0,
                        help="Request timeout: 10 s keeps the set within 90 minutes here.")
    parser.add_argument("--hold-s", type=float, default=30.0)
    parser.add_argument("--max-extension-s", type=float, default=15.0)
    parser.add_argument("--slo-hold-s", type=float, default=20.0)
    parser.add_argument("--expected-pod-rps", type=float, default=1.9,
                        help="Requests/s one scaled pod serves (measured: 15.2 req/s from 8 pods of 0.15 CPU).")
    parser.add_argument("--rtt-ms", type=float, default=LinkSettings.rtt_ms)
    parser.add_argument("--bandwidth-mbit", type=float, default=LinkSettings.bandwidth_mbit)
    parser.add_argument("--report-only", action="store_true",
                        help="Measure nothing: write the report again from the copy in --docs (after a change to "
                             "the report's code).")
    return parser.parse_args()


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"== [{(time.monotonic() - self.started) / 60:5.1f} min] {text}", flush=True)


def run(*command: str | Path) -> str:
    return subprocess.run([str(c) for c in command], check=True, text=True, stdout=subprocess.PIPE).stdout.strip()


def cluster_up(clock: Clock) -> str:
    """The test cluster up, today's image on every node, the scaled Deployment applied; returns the kubeconfig."""
    clock.say("test cluster (scripts/test-cluster up), image (make image), load-image, the scaled overlay")
    subprocess.run([TEST_CLUSTER, "up"], check=True)
    kubeconfig = run(TEST_CLUSTER, "kubeconfig")
    subprocess.run(["make", "-C", ROOT, "image", f"IMAGE={IMAGE}"], check=True)
    subprocess.run([TEST_CLUSTER, "load-image", IMAGE], check=True)
    kubectl = [KUBECTL, "--kubeconfig", kubeconfig]
    subprocess.run([*kubectl, "apply", "-k", OVERLAY], check=True)
    # The image is rebuilt under the same tag: restart so every pod runs the one just loaded.
    subprocess.run([*kubectl, "rollout", "restart", "deployment/clouddetect"], check=True)
    subprocess.run([*kubectl, "rollout", "status", "deployment/clouddetect", f"--timeout={ROLLOUT_TIMEOUT_S}s"],
                   check=True)
    return kubeconfig


def service_url(kubeconfig: str) -> str:
    kubectl = [KUBECTL, "--kubeconfig", kubeconfig]
    port = run(*kubectl, "get", "service", "clouddetect", "-o", "jsonpath={.spec.ports[0].nodePort}")
    address = run(*kubectl, "get", "node", "controller", "-o",
                  "jsonpath={.status.addresses[?(@.type=='InternalIP')].address}")
    return f"http://{address}:{port}"


def lab_run(args: argparse.Namespace, location: str, out: Path, kubeconfig: str, url: str) -> list[str]:
    return [sys.executable, "-m", "clouddetect", "lab", "run", "--client-location", location, "--out", str(out),
            "--pods", ",".join(map(str, ASSIGNMENT_PODS)), "--repeats", str(args.repeats),
            "--timeout-s", str(args.timeout_s), "--hold-s", str(args.hold_s),
            "--max-extension-s", str(args.max_extension_s), "--slo-hold-s", str(args.slo_hold_s),
            "--progress-interval-s", "10", "--expected-pod-rps", str(args.expected_pod_rps),
            "--kubeconfig", kubeconfig, "--service-url", url]


def expected_s(args: argparse.Namespace) -> float:
    search = SearchSettings(hold_s=args.hold_s, slo_hold_s=args.slo_hold_s)
    load = LoadSettings(timeout_s=args.timeout_s, max_extension_s=args.max_extension_s)
    runs = sum(expected_run_s(p, search, load, args.expected_pod_rps) for p in ASSIGNMENT_PODS) * args.repeats
    return len(CLIENT_LOCATIONS) * (runs + len(ASSIGNMENT_PODS) * SCALING_ALLOWANCE_S)


def publish(args: argparse.Namespace, sets: dict[str, Path]) -> None:
    """The committed copy: each set's experiment.json and runs.json (not Locust's raw files)."""
    for location, out in sets.items():
        copy = args.docs / location
        copy.mkdir(parents=True, exist_ok=True)
        for name in (CONDITIONS_FILE, RUNS_JSON):
            shutil.copy2(out / name, copy / name)


def write_report(args: argparse.Namespace, clock: Clock) -> None:
    """The report made from exactly the committed copy, and its first pages as PNGs."""
    sets = [args.docs / location for location in CLIENT_LOCATIONS]
    report = args.docs / "report"
    clock.say(f"report -> {report}")
    lines = [part for line in title_lines(*map(Experiment.load, sets)) for part in ("--line", line)]
    subprocess.run([sys.executable, "-m", "clouddetect", "lab", "report", *sets, "--out", report, "--title", TITLE,
                    *lines], check=True)
    (report / "report.html").unlink(missing_ok=True)  # the PDF is its print; the Markdown its text
    for page in range(1, PAGES + 1):  # one file each, named alike however many pages the PDF has
        subprocess.run(["pdftoppm", "-png", "-r", str(PAGE_DPI), "-f", str(page), "-l", str(page), "-singlefile",
                        report / "report.pdf", report / f"page-{page}"], check=True)


def title_lines(master: Experiment, remote: Experiment) -> list[str]:
    """What was scaled and why, and the conditions, as the experiments recorded them."""
    pods, link = master.environment["service"], remote.conditions["client_link"]
    runs = len(master.runs) + len(remote.runs)
    return [
        f"Scaled to fit: each pod's CPU is {pods['pod_cpu']} (memory {pods['pod_memory']} as assigned) because eight "
        "pods of 0.5 CPU, the load generator and the control plane do not fit the 2-core machine that runs all "
        f"three nodes (deploy/k8s/overlays/test-cluster-cpu-scaled); per-pod figures are per {pods['pod_cpu']} of "
        "CPU.",
        f"Timeout {master.conditions['timeout_s']:g} s and hold {master.conditions['hold_s']:g} s, so that the "
        f"{runs} runs finish within 90 minutes; remote client: a network namespace, {link['rtt_ms']:g} ms "
        f"round trip, {link['bandwidth_mbit']:g} Mbit/s each way.",
        "Made by `python benchmarks/full_table.py`.",
    ]


def main() -> None:
    args = parse()
    if shutil.which("pdftoppm") is None:
        sys.exit("pdftoppm is missing: apt-get install poppler-utils")
    clock = Clock()
    if not args.report_only:
        measure(args, clock)
    write_report(args, clock)
    clock.say("done")


def measure(args: argparse.Namespace, clock: Clock) -> None:
    out = args.out or ROOT / "results" / datetime.now(UTC).strftime("full-table-%Y%m%d-%H%M%S")
    clock.say(f"expected: {expected_s(args) / 60:.0f} minutes for {len(ASSIGNMENT_PODS)} pod counts x "
              f"{len(CLIENT_LOCATIONS)} client locations x {args.repeats} repeats, scaling included, after the "
              "cluster is up; results in " + str(out))
    kubeconfig = cluster_up(clock)
    url = service_url(kubeconfig)
    sets = {location: out / location for location in CLIENT_LOCATIONS}
    for number, (location, directory) in enumerate(sets.items(), 1):
        clock.say(f"set {number}/{len(sets)}: client on the {location}")
        command = lab_run(args, location, directory, kubeconfig, url)
        if location == "remote":
            command = [sys.executable, "-m", "clouddetect", "lab", "link", "run", "--rtt-ms", str(args.rtt_ms),
                       "--bandwidth-mbit", str(args.bandwidth_mbit), "--", *command]
        subprocess.run(command, check=True)
    publish(args, sets)


if __name__ == "__main__":
    main()
