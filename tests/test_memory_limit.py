"""The memory limit read from real files laid out like /sys/fs/cgroup, for both cgroup versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from clouddetect.memory_limit import (
    CGROUP_V1_LIMIT,
    CGROUP_V2_LIMIT,
    cgroup_memory_limit_bytes,
    memory_limit_bytes,
    physical_memory_bytes,
)

POD_LIMIT_BYTES = 512 * 1024 * 1024
V1_UNLIMITED = "9223372036854771712"  # what a v1 cgroup without a limit holds


def cgroup(root: Path, name: str, content: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content + "\n")
    return root


@pytest.mark.parametrize("name", [CGROUP_V2_LIMIT, CGROUP_V1_LIMIT])
def test_a_pod_limit_is_read_from_either_cgroup_version(tmp_path: Path, name: str) -> None:
    root = cgroup(tmp_path, name, str(POD_LIMIT_BYTES))
    assert cgroup_memory_limit_bytes(root) == POD_LIMIT_BYTES
    assert memory_limit_bytes(root) == POD_LIMIT_BYTES


@pytest.mark.parametrize(("name", "content"), [(CGROUP_V2_LIMIT, "max"), (CGROUP_V1_LIMIT, V1_UNLIMITED)])
def test_unlimited_means_the_machines_memory(tmp_path: Path, name: str, content: str) -> None:
    root = cgroup(tmp_path, name, content)
    assert memory_limit_bytes(root) == physical_memory_bytes() > POD_LIMIT_BYTES


def test_v2_is_read_before_v1(tmp_path: Path) -> None:
    cgroup(tmp_path, CGROUP_V1_LIMIT, V1_UNLIMITED)
    assert memory_limit_bytes(cgroup(tmp_path, CGROUP_V2_LIMIT, str(POD_LIMIT_BYTES))) == POD_LIMIT_BYTES


def test_no_cgroup_files_means_the_machines_memory(tmp_path: Path) -> None:
    assert cgroup_memory_limit_bytes(tmp_path) is None
    assert memory_limit_bytes(tmp_path) == physical_memory_bytes()
