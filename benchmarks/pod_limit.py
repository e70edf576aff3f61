"""Run processes under a pod's limits (Kubernetes' ``cpu: 500m`` and ``memory: 512Mi``), so benchmarks here measure
what a pod would get: the CPU quota rations throughput, and the memory limit is what the service reads to choose
its engine and Winograd, so both must be there.

Where the machine allows it, fresh cgroups hold the processes: v1 ``cpu.cfs_quota_us`` and ``memory.limit_in_bytes``
in their two hierarchies, or v2 ``cpu.max`` and ``memory.max`` in one. Elsewhere they are pinned to one core, which is
more than 0.5 CPU and no memory limit, and a warning says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clouddetect.client import wait_ready

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
POD_MEMORY_BYTES = 512 * 1024 * 1024
MIB = 1024 * 1024
# What a CPU without AVX-512 runs (the AMD EPYC of OCI's E4.Flex has AVX2 only): OpenVINO's oneDNN and OpenCV's
# dispatch both stop at AVX2.
AVX2_ONLY_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OPENCV_CPU_DISABLE": "AVX512-SKX"}


@dataclass(frozen=True)
class PodLimit:
    cpus: float
    memory_bytes: int
    cgroups: tuple[Path, ...]
    description: str

    def join(self) -> None:
        """Move the calling process into the limits; pass as ``preexec_fn`` so a child starts inside them."""
        for group in self.cgroups:
            (group / "cgroup.procs").write_text(str(os.getpid()))
        if not self.cgroups:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _make_cgroups(name: str, cpus: float, memory_bytes: int) -> tuple[Path, ...]:
    quota_us = int(cpus * CFS_PERIOD_US)
    try:
        if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists() and (CGROUP_ROOT / "memory").is_dir():
            cpu, memory = CGROUP_ROOT / "cpu" / name, CGROUP_ROOT / "memory" / name
            cpu.mkdir(exist_ok=True)
            memory.mkdir(exist_ok=True)
            (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota_us))
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            return cpu, memory
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            group = CGROUP_ROOT / name
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota_us} {CFS_PERIOD_US}")
            (group / "memory.max").write_text(str(memory_bytes))
            return (group,)
    except OSError as exc:
        print(f"warning: cannot create cgroups here ({exc})", file=sys.stderr)
    return ()


@contextmanager
def pod_limit(cpus: float = 0.5, memory_bytes: int = POD_MEMORY_BYTES, name: str = "clouddetect-bench"
              ) -> Iterator[PodLimit]:
    """A pod's CPU quota and memory limit for child processes; the cgroups are removed afterwards (their processes
    must have ended)."""
    groups = _make_cgroups(f"{name}-{os.getpid()}", cpus, memory_bytes)
    if not groups:
        print(f"warning: no cgroups available; pinning to one core instead of {cpus} CPU, no memory limit",
              file=sys.stderr)
        yield PodLimit(cpus, memory_bytes, (), "pinned to one core (no cgroups available), no memory limit")
        return
    try:
        yield PodLimit(cpus, memory_bytes, groups,
                       f"cgroups with CFS quota {cpus} CPU and memory limit {memory_bytes // MIB} MiB")
    finally:
        for group in groups:
            try:
                group.rmdir()
            except OSError as exc:
                print(f"warning: cgroup {group} not removed: {exc}", file=sys.stderr)


@contextmanager
def limited_server(
    limit: PodLimit, port: int, ready_timeout_s: float, settings_env: dict[str, str] | None = None,
    log_level: str = "warning",
) -> Iterator[subprocess.Popen[bytes]]:
    """``clouddetect serve`` inside the limits, ready on 127.0.0.1:``port``; SIGTERM after. Its default settings
    unless the environment or ``settings_env`` (CLOUDDETECT_* and other variables) changes some."""
    server = subprocess.Popen(
        [sys.executable, "-m", "clouddetect", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", log_level],
        preexec_fn=limit.join,  # noqa: PLW1509 - the child must start inside the limits
        env={**os.environ, **(settings_env or {})},
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", ready_timeout_s, still_starting=lambda: server.poll() is None)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=ready_timeout_s)
