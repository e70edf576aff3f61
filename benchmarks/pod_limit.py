"""Run processes under a CPU limit like a Kubernetes pod's, so benchmarks here measure what a pod would get.

Where the machine allows it, a fresh cgroup with a CFS quota (v1 ``cpu.cfs_quota_us`` or v2 ``cpu.max``) holds the
processes; elsewhere they are pinned to one core, which is more than 0.5 CPU, and a warning says so.
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
from clouddetect.config import ENV_PREFIX

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
# What winograd auto chooses in the pod's 512Mi; this machine has more memory, where auto would turn it on.
POD_SETTINGS_ENV = {ENV_PREFIX + "WINOGRAD": "off"}


@dataclass(frozen=True)
class CpuLimit:
    cpus: float
    cgroup: Path | None
    description: str

    def join(self) -> None:
        """Move the calling process into the limit; pass as ``preexec_fn`` so a child starts inside it."""
        if self.cgroup is not None:
            (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))
        else:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _make_cgroup(name: str, cpus: float) -> Path | None:
    quota_us = int(cpus * CFS_PERIOD_US)
    v1 = CGROUP_ROOT / "cpu"
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            group = v1 / name
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
            return group
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            group = CGROUP_ROOT / name
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota_us} {CFS_PERIOD_US}")
            return group
    except OSError as exc:
        print(f"warning: cannot create a cgroup here ({exc})", file=sys.stderr)
    return None


@contextmanager
def cpu_limit(cpus: float = 0.5, name: str = "clouddetect-bench") -> Iterator[CpuLimit]:
    """A CPU limit for child processes; the cgroup is removed afterwards (its processes must have ended)."""
    group = _make_cgroup(f"{name}-{os.getpid()}", cpus)
    if group is None:
        print(f"warning: no CFS quota available; pinning to one core instead of {cpus} CPU", file=sys.stderr)
        yield CpuLimit(cpus, None, "pinned to one core (no CFS quota available)")
        return
    try:
        yield CpuLimit(cpus, group, f"cgroup {group} with CFS quota {cpus} CPU")
    finally:
        try:
            group.rmdir()
        except OSError as exc:
            print(f"warning: cgroup {group} not removed: {exc}", file=sys.stderr)


@contextmanager
def limited_server(
    limit: CpuLimit, port: int, ready_timeout_s: float, settings_env: dict[str, str] | None = None,
    log_level: str = "warning",
) -> Iterator[subprocess.Popen[bytes]]:
    """``clouddetect serve`` inside the limit, ready on 127.0.0.1:``port``; SIGTERM after. The pod's default settings
    unless the environment or ``settings_env`` (CLOUDDETECT_* variables) changes some."""
    server = subprocess.Popen(
        [sys.executable, "-m", "clouddetect", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", log_level],
        preexec_fn=limit.join,  # noqa: PLW1509 - the child must start inside the CPU limit
        env={**POD_SETTINGS_ENV, **os.environ, **(settings_env or {})},
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", ready_timeout_s, still_starting=lambda: server.poll() is None)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=ready_timeout_s)
