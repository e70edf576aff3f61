"""How much of the raw OpenCV pipeline's speed the full HTTP service keeps, under a pod's 0.5-CPU limit.

Both are measured in this one run, on the same images and the same CPU limit:
- raw: decode + resize + forward + post-processing with the detector alone, in one process;
- service: ``clouddetect serve`` (hypercorn, Flask, JSON, base64) fed by a concurrent client from outside the limit.
Raw and service alternate, ``--repeats`` times, so drift of a shared machine falls on both; prints images/s of
each, their ratio per repeat and its median, and the serving worker's peak RSS. It also prints the CPU seconds
per image of each (the raw process's, the serving worker's with all its threads), whose ratio a busy machine
sways much less than it sways throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pod_limit import PodLimit, limited_server, pod_limit

from clouddetect.client import run as run_client
from clouddetect.images import default_folder, image_files

READY_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 60.0


def raw_pipeline(folder: Path, rounds: int) -> tuple[float, float]:
    """Images/s of the detector alone, after one warm-up inference, and its CPU seconds per image."""
    from clouddetect.codec import decode_image
    from clouddetect.config import Settings
    from clouddetect.detector import Detector
    from clouddetect.model_store import locate

    settings = Settings.load()
    detector = Detector(locate(settings.model_dir), settings)
    detector.warm_up()
    payloads = [p.read_bytes() for p in image_files(folder)]
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        for data in payloads:
            detector.detect(decode_image(data))
    images = rounds * len(payloads)
    return images / (time.perf_counter() - started), (time.process_time() - cpu_started) / images


def worker_peak_rss_mib(master_pid: int) -> float:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    peaks = []
    for pid in [master_pid, *map(int, children)]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def cpu_s(pid: int) -> float:
    """CPU seconds a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service(folder: Path, rounds: int, concurrency: int, port: int,
            limit: PodLimit) -> tuple[float, float, float]:
    """Images/s of the whole service over HTTP, its worker's CPU seconds per image and peak RSS in MiB."""
    url = f"http://127.0.0.1:{port}"
    with limited_server(limit, port, READY_TIMEOUT_S) as server:
        run_client(url, folder, concurrency, CLIENT_TIMEOUT_S, lambda _: None)  # warm-up round
        started, cpu_started = time.perf_counter(), cpu_s(server.pid)
        images = 0
        for _ in range(rounds):
            summary = run_client(url, folder, concurrency, CLIENT_TIMEOUT_S, lambda _: None)
            if summary.failed:
                raise RuntimeError(f"{summary.failed} requests failed")
            images += summary.images
        rate = images / (time.perf_counter() - started)
        return rate, (cpu_s(server.pid) - cpu_started) / images, worker_peak_rss_mib(server.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--rounds", type=int, default=1, help="passes over the image folder per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating raw/service measurements")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight against the service")
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=5098)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # the raw child process
    args = parser.parse_args()
    if args.raw:
        rate, cpu_per_image_s = raw_pipeline(args.images, args.rounds)
        print(json.dumps({"images_per_s": rate, "cpu_per_image_s": cpu_per_image_s}))
        return
    with pod_limit(args.cpus) as limit:
        print(f"machine: {os.cpu_count()} cores; limit: {limit.description}; images: {args.images}; "
              f"rounds: {args.rounds}; client concurrency: {args.concurrency}")
        ratios, cpu_ratios = [], []
        for repeat in range(1, args.repeats + 1):
            raw_rate, raw_cpu_s = raw_in_child(args.images, args.rounds, limit)
            service_rate, service_cpu_s, rss_mib = service(args.images, args.rounds, args.concurrency, args.port,
                                                           limit)
            ratios.append(service_rate / raw_rate)
            cpu_ratios.append(raw_cpu_s / service_cpu_s)
            print(f"repeat {repeat}: raw {raw_rate:5.2f} images/s, service {service_rate:5.2f} images/s, "
                  f"ratio {ratios[-1]:.3f}; CPU per image raw {raw_cpu_s * 1000:.1f} ms, service "
                  f"{service_cpu_s * 1000:.1f} ms, ratio {cpu_ratios[-1]:.3f}; worker peak RSS {rss_mib:.1f} MiB",
                  flush=True)
    print(f"median ratio service/raw over {args.repeats} repeats: {statistics.median(ratios):.3f} (target >= 0.95); "
          f"of CPU per image (raw/service, not swayed by the machine's load): {statistics.median(cpu_ratios):.3f}")


def raw_in_child(folder: Path, rounds: int, limit: PodLimit) -> tuple[float, float]:
    """The raw pipeline in a process of its own inside the limit, as the service's worker is."""
    out = subprocess.run(
        [sys.executable, __file__, "--raw", "--images", str(folder), "--rounds", str(rounds)],
        preexec_fn=limit.join, check=True, capture_output=True, text=True,  # noqa: PLW1509
    ).stdout
    measured = json.loads(out)
    return float(measured["images_per_s"]), float(measured["cpu_per_image_s"])

if __name__ == "__main__":
    main()
