"""The limits a process lives under: read for real from nested cgroups made on this machine, and from proc files
laid out as a container, a cgroup v2 host and a cgroup namespace show them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clouddetect.cgroup_limits import CgroupUsage, cpu_limit_cores, memory_limit_bytes, physical_memory_bytes, usage

MIB = 1024 * 1024
POD_LIMIT_BYTES = 512 * MIB
V1_ROOT = Path("/sys/fs/cgroup")
PROBE = ("import json; from clouddetect.cgroup_limits import cpu_limit_cores, memory_limit_bytes; "
         "print(json.dumps([memory_limit_bytes(), cpu_limit_cores()]))")
# Busy for a while under the quota, then report what the cgroup counted.
BUSY_PROBE = ("import dataclasses, json, time; from clouddetect.cgroup_limits import usage\n"
              "end = time.monotonic() + {seconds}\n"
              "while time.monotonic() < end: pass\n"
              "print(json.dumps(dataclasses.asdict(usage())))")
BUSY_S = 0.6


# ---- real cgroups: a limited parent and an unlimited child, the process in the child


@pytest.fixture
def nested_v1() -> Iterator[tuple[Path, Path]]:
    """A memory and a cpu cgroup v1, each with a child; the limits are for the test to set on the parents."""
    if not (V1_ROOT / "memory" / "memory.limit_in_bytes").exists() or not os.access(V1_ROOT / "memory", os.W_OK):
        pytest.skip("needs writable cgroup v1 memory and cpu hierarchies (root on a cgroup v1 machine)")
    name = f"clouddetect-test-{os.getpid()}"
    parents = [V1_ROOT / "memory" / name, V1_ROOT / "cpu" / name]
    for parent in parents:
        (parent / "child").mkdir(parents=True)
    try:
        yield parents[0], parents[1]
    finally:
        for parent in parents:
            (parent / "child").rmdir()
            parent.rmdir()


def seen_in(probe: str, *cgroups: Path) -> object:
    """What a fresh Python process started in these cgroups prints (JSON)."""

    def join() -> None:
        for group in cgroups:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    out = subprocess.run([sys.executable, "-c", probe], preexec_fn=join, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def limits_seen_in(*cgroups: Path) -> tuple[int, float | None]:
    memory, cpu = seen_in(PROBE, *cgroups)
    return memory, cpu


def test_a_parents_memory_limit_and_cpu_quota_bind_a_process_in_an_unlimited_child(nested_v1) -> None:
    memory, cpu = nested_v1
    (memory / "memory.limit_in_bytes").write_text(str(POD_LIMIT_BYTES))
    (cpu / "cpu.cfs_period_us").write_text("100000")
    (cpu / "cpu.cfs_quota_us").write_text("50000")
    assert limits_seen_in(memory / "child", cpu / "child") == (POD_LIMIT_BYTES, 0.5)


def test_the_smallest_limit_on_the_path_wins(nested_v1) -> None:
    memory, cpu = nested_v1
    (memory / "memory.limit_in_bytes").write_text(str(POD_LIMIT_BYTES))
    (memory / "child" / "memory.limit_in_bytes").write_text(str(256 * MIB))
    (cpu / "cpu.cfs_period_us").write_text("100000")
    (cpu / "cpu.cfs_quota_us").write_text("150000")
    (cpu / "child" / "cpu.cfs_period_us").write_text("100000")
    (cpu / "child" / "cpu.cfs_quota_us").write_text("25000")
    assert limits_seen_in(memory / "child", cpu / "child") == (256 * MIB, 0.25)


def test_the_limited_cgroup_counts_cpu_used_and_throttled_and_peak_memory(nested_v1) -> None:
    """A process spinning in an unlimited child of a 0.2-CPU parent: the parent, which binds it, is read."""
    memory, cpu = nested_v1
    (memory / "memory.limit_in_bytes").write_text(str(POD_LIMIT_BYTES))
    (cpu / "cpu.cfs_period_us").write_text("100000")
    (cpu / "cpu.cfs_quota_us").write_text("20000")
    probe = BUSY_PROBE.format(seconds=BUSY_S)
    found = CgroupUsage(**seen_in(probe, memory / "child", cpu / "child"))
    assert found.cpu_periods and found.cpu_periods >= 3
    assert found.cpu_throttled_periods and found.cpu_throttled_s and found.cpu_throttled_s > 0
    assert found.memory_peak_bytes and 0 < found.memory_peak_bytes < POD_LIMIT_BYTES
    if (V1_ROOT / "cpuacct").resolve() != (V1_ROOT / "cpu").resolve():
        # cpuacct mounted apart (as here), where the probe stayed in the root: the machine's time, not given...
        assert found.cpu_usage_s is None
        cpuacct = V1_ROOT / "cpuacct" / cpu.name
        cpuacct.mkdir()
        try:  # ...until it is in the cgroup of the same path there
            found = CgroupUsage(**seen_in(probe, memory / "child", cpu / "child", cpuacct))
        finally:
            cpuacct.rmdir()
    # At 0.2 CPU the probe got at most ~0.2 of its wall time: its own CPU, not the machine's.
    assert found.cpu_usage_s is not None and 0 < found.cpu_usage_s < BUSY_S / 2


def test_cgroups_without_limits_mean_the_machines_memory_and_no_quota(nested_v1) -> None:
    memory, cpu = nested_v1
    assert limits_seen_in(memory / "child", cpu / "child") == (physical_memory_bytes(), None)


# ---- proc files and cgroup trees laid out in a folder: the layouts this machine does not have


def proc_self(tmp_path: Path, cgroup: str, mounts: list[tuple[str, str, str, str]]) -> Path:
    """A /proc/self with the given cgroup file and mountinfo lines (root, mount point, type, super options)."""
    folder = tmp_path / "proc-self"
    folder.mkdir()
    (folder / "cgroup").write_text(cgroup)
    lines = [f"{30 + i} 23 0:{40 + i} {root} {point} rw,relatime shared:1 - {kind} {kind} {options}"
             for i, (root, point, kind, options) in enumerate(mounts)]
    (folder / "mountinfo").write_text("\n".join(["22 1 8:1 / / rw - ext4 /dev/vda rw", *lines]) + "\n")
    return folder


def write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content + "\n")


def test_v2_limits_on_a_slice_above_a_scope_bind_the_process(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    write(mount / "work.slice" / "memory.max", str(POD_LIMIT_BYTES))
    write(mount / "work.slice" / "cpu.max", "50000 100000")
    write(mount / "work.slice" / "run-1.scope" / "memory.max", "max")
    write(mount / "work.slice" / "run-1.scope" / "cpu.max", "max 100000")
    proc = proc_self(tmp_path, "0::/work.slice/run-1.scope\n", [("/", str(mount), "cgroup2", "rw,nsdelegate")])
    assert (memory_limit_bytes(proc), cpu_limit_cores(proc)) == (POD_LIMIT_BYTES, 0.5)


def test_a_container_whose_mount_root_is_its_own_cgroup_reads_it(tmp_path: Path) -> None:
    mount = tmp_path / "memory"
    write(mount / "memory.limit_in_bytes", str(POD_LIMIT_BYTES))  # the container's cgroup, mounted as the root
    proc = proc_self(tmp_path, "4:memory:/kubepods/pod1/c1\n",
                     [("/kubepods/pod1/c1", str(mount), "cgroup", "ro,memory")])
    assert memory_limit_bytes(proc) == POD_LIMIT_BYTES


def test_combined_v1_controllers_and_escaped_mount_points_are_found(tmp_path: Path) -> None:
    mount = tmp_path / "cpu cpuacct"
    write(mount / "pod" / "cpu.cfs_quota_us", "50000")
    write(mount / "pod" / "cpu.cfs_period_us", "100000")
    proc = proc_self(tmp_path, "3:cpu,cpuacct:/pod\n",
                     [("/", str(mount).replace(" ", "\\040"), "cgroup", "rw,cpu,cpuacct")])
    assert cpu_limit_cores(proc) == 0.5


def test_a_cgroup_outside_the_namespace_root_falls_back_to_the_mount(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    write(mount / "memory.max", str(POD_LIMIT_BYTES))
    proc = proc_self(tmp_path, "0::/../sibling/leaf\n", [("/", str(mount), "cgroup2", "rw")])
    assert memory_limit_bytes(proc) == POD_LIMIT_BYTES


def test_unreadable_proc_files_mean_the_machines_figures(tmp_path: Path) -> None:
    assert (memory_limit_bytes(tmp_path), cpu_limit_cores(tmp_path)) == (physical_memory_bytes(), None)
    proc = proc_self(tmp_path, "not a cgroup line\n", [("/", str(tmp_path), "cgroup2", "rw")])
    assert (memory_limit_bytes(proc), cpu_limit_cores(proc)) == (physical_memory_bytes(), None)


def test_no_cgroup_mounts_mean_the_machines_memory_and_no_quota(tmp_path: Path) -> None:
    proc = proc_self(tmp_path, "0::/\n", [])
    assert (memory_limit_bytes(proc), cpu_limit_cores(proc)) == (physical_memory_bytes(), None)


def test_v2_usage_is_read_from_the_cgroup_that_carries_the_limits(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    write(mount / "pod.slice" / "cpu.max", "50000 100000")
    write(mount / "pod.slice" / "memory.max", str(POD_LIMIT_BYTES))
    write(mount / "pod.slice" / "cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
          "nr_periods 40\nnr_throttled 30\nthrottled_usec 1500000")
    write(mount / "pod.slice" / "memory.peak", str(300 * MIB))
    write(mount / "pod.slice" / "app.scope" / "cpu.max", "max 100000")
    write(mount / "pod.slice" / "app.scope" / "cpu.stat", "usage_usec 1\nnr_periods 0\nnr_throttled 0")
    proc = proc_self(tmp_path, "0::/pod.slice/app.scope\n", [("/", str(mount), "cgroup2", "rw")])
    assert usage(proc) == CgroupUsage(cpu_usage_s=2.5, cpu_periods=40, cpu_throttled_periods=30,
                                      cpu_throttled_s=1.5, memory_peak_bytes=300 * MIB)


def test_no_cgroup_means_no_usage(tmp_path: Path) -> None:
    assert usage(tmp_path) == CgroupUsage(None, None, None, None, None)


def test_v1_usage_in_a_container_with_cpu_and_cpuacct_mounted_together(tmp_path: Path) -> None:
    """A pod's container as Docker shows it: its own cgroup mounted as the root, the quota on it."""
    mount = tmp_path / "cpu,cpuacct"
    write(mount / "cpu.cfs_quota_us", "15000")
    write(mount / "cpu.cfs_period_us", "100000")
    write(mount / "cpu.stat", "nr_periods 50\nnr_throttled 45\nthrottled_time 3000000000")
    write(mount / "cpuacct.usage", "7500000000")
    proc = proc_self(tmp_path, "3:cpu,cpuacct:/kubepods/pod1/c1\n",
                     [("/kubepods/pod1/c1", str(mount), "cgroup", "ro,cpu,cpuacct")])
    assert usage(proc) == CgroupUsage(cpu_usage_s=7.5, cpu_periods=50, cpu_throttled_periods=45, cpu_throttled_s=3.0,
                                      memory_peak_bytes=None)
