"""The limits this process really lives under: the smallest memory limit and CPU quota on its own cgroup's path.

A pod's limits sit on its container's cgroup, but a systemd unit's ``MemoryMax=``, a ``systemd-run`` scope or any
cgroup made below the root puts them on a cgroup that is neither the root nor the process's own, and a parent's limit
binds every child however lax the child's. So, as the JVM and Go's runtime do, this process's cgroup is read from
``/proc/self/cgroup`` (v1: a line per hierarchy; v2: ``0::PATH``), each hierarchy's mount point from
``/proc/self/mountinfo``, and every cgroup from the process's own up to the mount's root is read: the smallest limit
wins. Settings that trade memory for speed (``winograd`` auto, the engine trial) are chosen from it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger("clouddetect.cgroup_limits")
PROC_SELF = Path("/proc/self")
V1_MEMORY_LIMIT = "memory.limit_in_bytes"  # a number near 2**63 when unlimited
V2_MEMORY_LIMIT = "memory.max"  # "max" when unlimited
V1_CPU_QUOTA, V1_CPU_PERIOD = "cpu.cfs_quota_us", "cpu.cfs_period_us"  # quota -1 when unlimited
V2_CPU_MAX = "cpu.max"  # "QUOTA PERIOD", QUOTA "max" when unlimited


@dataclass(frozen=True)
class Hierarchy:
    """One cgroup hierarchy as this process sees it: where it is mounted and which cgroup holds the process."""

    version: int
    controllers: frozenset[str]
    mount_root: PurePosixPath  # the cgroup shown at the mount point (not "/" inside some containers)
    mount_point: Path
    path: PurePosixPath  # this process's cgroup in the hierarchy

    def lineage(self) -> list[Path]:
        """The directories of the process's cgroup and of each ancestor visible under the mount point."""
        try:
            relative = self.path.relative_to(self.mount_root)
        except ValueError:  # the process's cgroup lies outside the mounted one: only the mount's root is readable
            relative = PurePosixPath()
        if ".." in relative.parts:  # a cgroup namespace shows cgroups outside its root as "/../name"
            relative = PurePosixPath()
        directory = self.mount_point / relative
        return [directory, *[p for p in directory.parents if p.is_relative_to(self.mount_point)]]


def hierarchies(proc_self: Path = PROC_SELF) -> list[Hierarchy]:
    """Every cgroup hierarchy this process belongs to that is mounted where it can read it; none where /proc does
    not tell (another kernel, a sandbox), so the machine's own figures apply."""
    try:
        return _hierarchies((proc_self / "mountinfo").read_text(), (proc_self / "cgroup").read_text())
    except (OSError, ValueError) as exc:
        log.debug("cgroups not read (%s); the machine's limits apply", exc)
        return []


def _hierarchies(mountinfo: str, cgroups: str) -> list[Hierarchy]:
    mounts = _cgroup_mounts(mountinfo)
    found = []
    for line in cgroups.splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        version = 2 if hierarchy_id == "0" and not controllers else 1
        wanted = frozenset(c.removeprefix("name=") for c in controllers.split(",") if c)
        for mount_version, mount_controllers, root, point in mounts:
            if mount_version == version and (version == 2 or wanted <= mount_controllers):
                found.append(Hierarchy(version, wanted, PurePosixPath(root), Path(point), PurePosixPath(path)))
                break
    return found


def _cgroup_mounts(mountinfo: str) -> list[tuple[int, frozenset[str], str, str]]:
    """(version, controllers, root, mount point) of each cgroup mount in a mountinfo text (proc(5) gives its fields)."""
    mounts = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, (fstype, _source, options) = before.split(), after.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            controllers = frozenset(o.removeprefix("name=") for o in options.split(",")) - {"rw", "ro"}
            mounts.append((1 if fstype == "cgroup" else 2, controllers, _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal escape."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


def _controller_dirs(controller: str, proc_self: Path) -> list[Path]:
    """The cgroup directories that may hold ``controller``'s limits for this process: its v1 hierarchy, and v2."""
    dirs: list[Path] = []
    for hierarchy in hierarchies(proc_self):
        if hierarchy.version == 2 or controller in hierarchy.controllers:
            dirs.extend(hierarchy.lineage())
    return dirs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit_bytes(proc_self: Path = PROC_SELF) -> int:
    """The smallest memory limit on this process's cgroup path, or the machine's memory when that is smaller or
    there is none (v1's "unlimited" is a huge number, which the machine's memory caps too)."""
    limits = [physical_memory_bytes()]
    for directory in _controller_dirs("memory", proc_self):
        for name in (V1_MEMORY_LIMIT, V2_MEMORY_LIMIT):
            raw = _read(directory / name)
            if raw is not None and raw.isdigit():  # "max" when unlimited
                limits.append(int(raw))
    return min(limits)


def cpu_limit_cores(proc_self: Path = PROC_SELF) -> float | None:
    """The smallest CFS quota on this process's cgroup path, in cores (0.5 for a pod's ``cpu: 500m``); None when
    no cgroup on the path has one."""
    quotas = []
    for directory in _controller_dirs("cpu", proc_self):
        v1_quota, v1_period = _read(directory / V1_CPU_QUOTA), _read(directory / V1_CPU_PERIOD)
        if v1_quota and v1_period and v1_quota.isdigit() and v1_period.isdigit() and int(v1_period):  # -1: none
            quotas.append(int(v1_quota) / int(v1_period))
        quota, _, period = (_read(directory / V2_CPU_MAX) or "").partition(" ")
        if quota.isdigit() and period.isdigit() and int(period):  # "max PERIOD": none
            quotas.append(int(quota) / int(period))
    return min(quotas, default=None)


CPU_STAT = "cpu.stat"  # v1: nr_periods, nr_throttled, throttled_time (ns); v2: the same in *_usec, and usage_usec
V1_CPU_USAGE = "cpuacct.usage"  # ns, every process of the cgroup
V1_MEMORY_PEAK, V2_MEMORY_PEAK = "memory.max_usage_in_bytes", "memory.peak"  # since the cgroup was made (v2: 5.19+)
V1_UNLIMITED = 2**62  # v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class CgroupUsage:
    """What the cgroup that binds this process has used: the counters a pod's CPU quota and memory limit act on.

    Read from the innermost cgroup on the process's path that carries the limit (a container's own, in a pod), so
    the figures cover every process under it; None where the kernel does not keep one.
    """

    cpu_usage_s: float | None
    cpu_periods: int | None  # CFS periods in which the cgroup ran
    cpu_throttled_periods: int | None  # of those, the ones it used up its quota in and was stopped
    cpu_throttled_s: float | None
    memory_peak_bytes: int | None


def _stat(directory: Path) -> dict[str, int]:
    """cpu.stat's "name value" lines."""
    pairs = (line.split() for line in (_read(directory / CPU_STAT) or "").splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def _binding(controller: str, limit_files: tuple[str, ...], proc_self: Path) -> Path | None:
    """The innermost cgroup directory on the path with a limit set, else the process's own (None: no cgroup)."""
    dirs = _controller_dirs(controller, proc_self)
    for directory in dirs:
        for name in limit_files:
            raw = (_read(directory / name) or "").split(" ")[0]
            if raw.isdigit() and int(raw) < V1_UNLIMITED:  # v2 writes "max"
                return directory
    return dirs[0] if dirs else None


def usage(proc_self: Path = PROC_SELF) -> CgroupUsage:
    """The counters of the cgroups whose limits bind this process (see ``CgroupUsage``)."""
    cpu = _binding("cpu", (V1_CPU_QUOTA, V2_CPU_MAX), proc_self)
    stat = _stat(cpu) if cpu else {}
    usage_s = stat["usage_usec"] / 1e6 if "usage_usec" in stat else _v1_cpu_usage_s(cpu, proc_self)
    throttled_s = (stat["throttled_usec"] / 1e6 if "throttled_usec" in stat
                   else stat["throttled_time"] / 1e9 if "throttled_time" in stat else None)
    memory = _binding("memory", (V1_MEMORY_LIMIT, V2_MEMORY_LIMIT), proc_self)
    peak = next((int(raw) for name in (V1_MEMORY_PEAK, V2_MEMORY_PEAK)
                 if memory and (raw := _read(memory / name) or "").isdigit()), None)
    return CgroupUsage(usage_s, stat.get("nr_periods"), stat.get("nr_throttled"), throttled_s, peak)


def _v1_cpu_usage_s(cpu: Path | None, proc_self: Path) -> float | None:
    """v1 keeps CPU time in the cpuacct controller: beside the quota's cgroup when mounted with cpu (the usual
    ``cpu,cpuacct``), else at the same path in its own hierarchy. None for the root cgroup (the machine's time)."""
    mounts = {c: h for h in hierarchies(proc_self) if h.version == 1 for c in ("cpu", "cpuacct") if c in h.controllers}
    if cpu is None or {"cpu", "cpuacct"} - set(mounts) or not cpu.is_relative_to(mounts["cpu"].mount_point):
        return None
    relative = cpu.relative_to(mounts["cpu"].mount_point)
    if not relative.parts and str(mounts["cpu"].mount_root) == "/":
        return None
    raw = _read(mounts["cpuacct"].mount_point / relative / V1_CPU_USAGE)
    return int(raw) / 1e9 if raw and raw.isdigit() else None
