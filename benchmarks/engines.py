"""Each engine and precision this CPU runs, served under a pod's 0.5-CPU limit, against OpenCV in the same run.

Prints, per engine/precision: the service's images/s over HTTP (the whole folder, a concurrent client outside
the limit), its ratio to opencv/f32 measured in the same repeat, and the serving worker's peak RSS. The configs
alternate, ``--repeats`` times, so drift of a shared machine falls on all of them. On a busy machine the cgroup
may not even get its quota, so the server's CPU time per image is printed too, and what a full quota would serve
with it: that ratio moves much less with the neighbours' load. Then the agreement of each
with its reference on the folder (openvino/f32 with opencv, bf16 with openvino/f32): detections matched (same
label, IoU >= 0.5), their mean IoU, the change of accuracy, and the images whose answers differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

from cpu_limit import CpuLimit, cpu_limit, limited_server
from service_vs_raw import worker_peak_rss_mib

from clouddetect.client import run as run_client
from clouddetect.codec import decode_image
from clouddetect.config import Settings
from clouddetect.detector import Box, Detection, Detector
from clouddetect.engines.openvino import cpu_capabilities
from clouddetect.images import default_folder, image_files
from clouddetect.model_store import locate

READY_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 60.0
MATCH_IOU = 0.5
REFERENCE = ("opencv", "f32")


def configs() -> list[tuple[str, str]]:
    """Every engine/precision this CPU runs natively, the reference first."""
    found = [REFERENCE, ("openvino", "f32")]
    if "BF16" in cpu_capabilities():
        found.append(("openvino", "bf16"))
    return found


@dataclasses.dataclass(frozen=True)
class Served:
    images_per_s: float
    cpu_s_per_image: float
    peak_rss_mib: float


def server_cpu_s(master_pid: int) -> float:
    """CPU seconds (user + system) the server's processes have used so far."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    ticks = 0
    for pid in [master_pid, *children]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def serve(folder: Path, engine: str, precision: str, concurrency: int, port: int, limit: CpuLimit) -> Served:
    """The whole service over HTTP, after a warm-up pass."""
    url = f"http://127.0.0.1:{port}"
    settings_env = {"CLOUDDETECT_ENGINE": engine, "CLOUDDETECT_PRECISION": precision}
    with limited_server(limit, port, READY_TIMEOUT_S, settings_env) as server:
        run_client(url, folder, concurrency, CLIENT_TIMEOUT_S, lambda _: None)
        started, cpu_started = time.perf_counter(), server_cpu_s(server.pid)
        summary = run_client(url, folder, concurrency, CLIENT_TIMEOUT_S, lambda _: None)
        elapsed_s, cpu_s = time.perf_counter() - started, server_cpu_s(server.pid) - cpu_started
        if summary.failed:
            raise RuntimeError(f"{engine}/{precision}: {summary.failed} requests failed")
        return Served(summary.images / elapsed_s, cpu_s / summary.images, worker_peak_rss_mib(server.pid))


def iou(a: Box, b: Box) -> float:
    width = min(a.left + a.width, b.left + b.width) - max(a.left, b.left)
    height = min(a.top + a.height, b.top + b.height) - max(a.top, b.top)
    overlap = max(width, 0) * max(height, 0)
    union = a.width * a.height + b.width * b.height - overlap
    return overlap / union if union else 0.0


@dataclasses.dataclass
class Agreement:
    reference: int = 0
    other: int = 0
    ious: list[float] = dataclasses.field(default_factory=list)
    accuracy_changes: list[float] = dataclasses.field(default_factory=list)
    differing_images: int = 0

    def add(self, reference: list[Detection], other: list[Detection]) -> None:
        """Greedy matching: each reference detection takes the unmatched one of the same label it overlaps most."""
        self.reference += len(reference)
        self.other += len(other)
        unmatched = list(other)
        for want in reference:
            candidates = [(iou(want.box, d.box), d) for d in unmatched if d.label == want.label]
            best = max(candidates, key=lambda pair: pair[0], default=None)
            if best is not None and best[0] >= MATCH_IOU:
                unmatched.remove(best[1])
                self.ious.append(best[0])
                self.accuracy_changes.append(best[1].confidence - want.confidence)
        same = len(reference) == len(other) and all(
            a.label == b.label and a.box == b.box for a, b in zip(reference, other, strict=True))
        self.differing_images += not same

    def report(self) -> str:
        changes = [abs(c) for c in self.accuracy_changes] or [0.0]
        return (f"{len(self.ious)} of {self.reference} detections matched ({self.other} found), "
                f"mean IoU {statistics.fmean(self.ious or [0.0]):.4f}, accuracy change mean "
                f"{statistics.fmean(self.accuracy_changes or [0.0]):+.5f} (|max| {max(changes):.5f}), "
                f"{self.differing_images} images with other labels or boxes")


def agreement(folder: Path) -> None:
    settings = Settings.load()
    files = locate(settings.model_dir)
    images = [decode_image(p.read_bytes()) for p in image_files(folder)]
    answers = {}
    for engine, precision in configs():
        detector = Detector(files, dataclasses.replace(settings, engine=engine, precision=precision))
        answers[engine, precision] = [detector.detect(image) for image in images]
    pairs = [(REFERENCE, ("openvino", "f32")), (("openvino", "f32"), ("openvino", "bf16"))]
    for reference, other in pairs:
        if other in answers:
            result = Agreement()
            for want, got in zip(answers[reference], answers[other], strict=True):
                result.add(want, got)
            print(f"agreement {'/'.join(other)} with {'/'.join(reference)} on {len(images)} images: {result.report()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements of every config")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight against the service")
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=5097)
    args = parser.parse_args()
    chosen = configs()
    runs: dict[tuple[str, str], list[Served]] = {c: [] for c in chosen}
    with cpu_limit(args.cpus) as limit:
        print(f"machine: {os.cpu_count()} cores, OpenVINO CPU capabilities {' '.join(cpu_capabilities())}; "
              f"limit: {limit.description}; images: {args.images}; client concurrency: {args.concurrency}")
        for repeat in range(1, args.repeats + 1):
            for engine, precision in chosen:
                served = serve(args.images, engine, precision, args.concurrency, args.port, limit)
                runs[engine, precision].append(served)
                reference = runs[REFERENCE][-1]
                print(f"repeat {repeat}: {engine}/{precision}: {served.images_per_s:5.2f} images/s "
                      f"({served.images_per_s / reference.images_per_s:.2f}x opencv); "
                      f"{served.cpu_s_per_image * 1000:5.1f} CPU ms/image, {args.cpus / served.cpu_s_per_image:5.2f} "
                      f"images/s at a full quota ({reference.cpu_s_per_image / served.cpu_s_per_image:.2f}x opencv); "
                      f"worker peak RSS {served.peak_rss_mib:.1f} MiB", flush=True)
    for config, served in runs.items():
        reference = runs[REFERENCE]
        wall = [s.images_per_s / r.images_per_s for s, r in zip(served, reference, strict=True)]
        cpu = [r.cpu_s_per_image / s.cpu_s_per_image for s, r in zip(served, reference, strict=True)]
        print(f"median {'/'.join(config)} over {args.repeats} repeats: "
              f"{statistics.median(s.images_per_s for s in served):5.2f} images/s, {statistics.median(wall):.2f}x "
              f"opencv/f32; at a full quota {statistics.median(args.cpus / s.cpu_s_per_image for s in served):5.2f} "
              f"images/s, {statistics.median(cpu):.2f}x; worker peak RSS "
              f"{max(s.peak_rss_mib for s in served):.1f} MiB")
    agreement(args.images)


if __name__ == "__main__":
    main()
