"""The memory this process may use: its cgroup's limit (a pod's ``resources.limits.memory``), else the machine's.

Settings that trade memory for speed (``winograd`` auto) are chosen from it, so the same image suits a 512Mi pod
and a larger one without a per-pod setting.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V2_LIMIT = "memory.max"  # "max" when unlimited
CGROUP_V1_LIMIT = "memory/memory.limit_in_bytes"  # a number near 2**63 when unlimited


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cgroup_memory_limit_bytes(cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup's memory limit (v2 first, then v1); None when unlimited or when neither file is there."""
    for name in (CGROUP_V2_LIMIT, CGROUP_V1_LIMIT):
        try:
            raw = (cgroup_root / name).read_text().strip()
        except FileNotFoundError:
            continue
        return None if raw == "max" else int(raw)
    return None


def memory_limit_bytes(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cgroup's limit, or the physical memory when that is smaller or there is none (v1's "unlimited" is a
    huge number, which the physical memory caps too)."""
    physical = physical_memory_bytes()
    limit = cgroup_memory_limit_bytes(cgroup_root)
    return physical if limit is None else min(limit, physical)
