"""Each engine setting, and the default, served in a pod's limits, against OpenCV with Winograd off in the same run.

The limits are a pod's: a 0.5-CPU quota *and* a 512 MiB memory limit (the memory decides what the default may
choose). Each config is served at the CPU's own instruction sets and again at AVX2 only (as CPUs without AVX-512
run, OCI's E4.Flex among them), through ``clouddetect serve`` with a concurrent client outside the limits. Prints per
config: images/s, the server's CPU ms per image (what a throttled machine sways least), its worker's peak RSS, each
as a ratio to the baseline measured in the same repeat and at the same instruction sets, and for the default the
engine it chose. The configs alternate, ``--repeats`` times, so drift of a shared machine falls on all of them.
Then the agreement of each engine with its reference on the folder (openvino/f32 with OpenCV, bf16 with
openvino/f32): detections matched (same label, IoU >= 0.5), their mean IoU, the change of accuracy, and the images
whose answers differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import requests
from pod_limit import AVX2_ONLY_ENV, PodLimit, limited_server, pod_limit
from service_vs_raw import worker_peak_rss_mib

from clouddetect.client import run as run_client
from clouddetect.codec import decode_image
from clouddetect.config import ENV_PREFIX, Settings
from clouddetect.detector import Box, Detection, Detector
from clouddetect.engines import EngineInfo, engine_label
from clouddetect.engines.openvino import cpu_capabilities
from clouddetect.images import default_folder, image_files
from clouddetect.model_store import locate

READY_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 60.0
WARM_UP_IMAGES = 16
MATCH_IOU = 0.5
BASELINE = "opencv/f32 Winograd off"
DEFAULT = "default (engine auto)"
ISAS = {"native": {}, "AVX2 only": AVX2_ONLY_ENV}


def configs() -> dict[str, dict[str, str]]:
    """Each config's settings, the baseline first; bf16 only where this CPU runs it natively (opt-in: answers move)."""
    engine, winograd, precision = (ENV_PREFIX + name for name in ("ENGINE", "WINOGRAD", "PRECISION"))
    chosen = {
        BASELINE: {engine: "opencv", winograd: "off"},
        "opencv/f32 Winograd on": {engine: "opencv", winograd: "on"},
        "openvino/f32": {engine: "openvino"},
        DEFAULT: {},
    }
    if "BF16" in cpu_capabilities():
        chosen["openvino/bf16"] = {engine: "openvino", precision: "bf16"}
    return chosen


@dataclasses.dataclass(frozen=True)
class Served:
    images_per_s: float
    cpu_s_per_image: float
    peak_rss_mib: float
    engine: str  # as /readyz names it


def server_cpu_s(master_pid: int) -> float:
    """CPU seconds (user + system) the server's processes have used so far."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    ticks = 0
    for pid in [master_pid, *children]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def serve(folder: Path, env: dict[str, str], concurrency: int, port: int, limit: PodLimit,
          warm_up_folder: Path) -> Served:
    """The whole service over HTTP, after a warm-up on a few images."""
    url = f"http://127.0.0.1:{port}"
    with limited_server(limit, port, READY_TIMEOUT_S, env) as server:
        ready = requests.get(url + "/readyz", timeout=CLIENT_TIMEOUT_S).json()
        run_client(url, warm_up_folder, concurrency, CLIENT_TIMEOUT_S, lambda _: None)
        started, cpu_started = time.perf_counter(), server_cpu_s(server.pid)
        summary = run_client(url, folder, concurrency, CLIENT_TIMEOUT_S, lambda _: None)
        elapsed_s, cpu_s = time.perf_counter() - started, server_cpu_s(server.pid) - cpu_started
        if summary.failed:
            raise RuntimeError(f"{env}: {summary.failed} requests failed")
        engine = engine_label(EngineInfo(ready["engine"], ready["precision"], (), winograd=ready["winograd"]))
        return Served(summary.images / elapsed_s, cpu_s / summary.images, worker_peak_rss_mib(server.pid), engine)


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
    engines = [("opencv", "f32"), ("openvino", "f32")] + [("openvino", "bf16")] * ("BF16" in cpu_capabilities())
    answers = {}
    for engine, precision in engines:
        detector = Detector(files, dataclasses.replace(settings, engine=engine, precision=precision))
        answers[engine, precision] = [detector.detect(image) for image in images]
    for reference, other in [(engines[0], engines[1]), *[(engines[1], e) for e in engines[2:]]]:
        result = Agreement()
        for want, got in zip(answers[reference], answers[other], strict=True):
            result.add(want, got)
        print(f"agreement {'/'.join(other)} with {'/'.join(reference)} on {len(images)} images: {result.report()}")


def summary_line(name: str, isa: str, runs: list[Served], baselines: list[Served]) -> str:
    """Medians over the repeats; each ratio is taken within a repeat, against the baseline of that repeat."""
    speed = statistics.median(s.images_per_s / b.images_per_s for s, b in zip(runs, baselines, strict=True))
    cpu = statistics.median(b.cpu_s_per_image / s.cpu_s_per_image for s, b in zip(runs, baselines, strict=True))
    engines = ", ".join(sorted({s.engine for s in runs}))
    return (f"| {name} | {isa} | {statistics.median(s.images_per_s for s in runs):.2f} | {speed:.2f}x | "
            f"{statistics.median(s.cpu_s_per_image for s in runs) * 1000:.1f} | {cpu:.2f}x | "
            f"{max(s.peak_rss_mib for s in runs):.0f} | {engines} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_folder())
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements of every config")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight against the service")
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--memory-mib", type=int, default=512)
    parser.add_argument("--port", type=int, default=5097)
    args = parser.parse_args()
    chosen = configs()
    runs: dict[tuple[str, str], list[Served]] = {(c, isa): [] for isa in ISAS for c in chosen}
    warm_up = Path(os.environ.get("TMPDIR", "/tmp")) / f"clouddetect-warm-up-{os.getpid()}"
    warm_up.mkdir()
    for path in image_files(args.images)[:WARM_UP_IMAGES]:
        (warm_up / path.name).symlink_to(path.resolve())
    with pod_limit(args.cpus, args.memory_mib * 1024 * 1024) as limit:
        print(f"machine: {os.cpu_count()} cores, OpenVINO CPU capabilities {' '.join(cpu_capabilities())}; "
              f"limits: {limit.description}; images: {args.images}; client concurrency: {args.concurrency}")
        for repeat in range(1, args.repeats + 1):
            for isa, isa_env in ISAS.items():
                for name, env in chosen.items():
                    if isa != "native" and name == "openvino/bf16":
                        continue  # not native without AVX-512 BF16 (the engine refuses it)
                    served = serve(args.images, {**env, **isa_env}, args.concurrency, args.port, limit, warm_up)
                    runs[name, isa].append(served)
                    base = runs[BASELINE, isa][-1]
                    print(f"repeat {repeat}, {isa}: {name} ({served.engine}): {served.images_per_s:5.2f} images/s "
                          f"({served.images_per_s / base.images_per_s:.2f}x); {served.cpu_s_per_image * 1000:5.1f} "
                          f"CPU ms/image ({base.cpu_s_per_image / served.cpu_s_per_image:.2f}x); worker peak RSS "
                          f"{served.peak_rss_mib:.0f} MiB", flush=True)
    for path in warm_up.iterdir():
        path.unlink()
    warm_up.rmdir()
    print(f"\nmedians over {args.repeats} repeats; ratios against {BASELINE} at the same instruction sets")
    print("| config | instruction sets | images/s | ratio | CPU ms/image | ratio | peak RSS MiB | engine |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, isa), served in runs.items():
        if served:
            print(summary_line(name, isa, served, runs[BASELINE, isa]))
    agreement(args.images)


if __name__ == "__main__":
    main()
