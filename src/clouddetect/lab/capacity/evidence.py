"""What bound a run, measured over its hold rather than inferred: each pod's CPU, throttling and memory against its
limits, the load generator's CPU and the client's link.

Two snapshots are taken, when the accepted load starts being held and when it stops: the pods' cgroup counters
(through their ``/metrics``), the CPU time of every Locust process, the bytes through the link's interface and the
load generator's machine's CPU. Their differences say whether the service was the bottleneck. A run whose load
generator was (a Locust process near a whole core, the link near its rate) is flagged ``client_bound``; a saturated
run whose pods could not use the CPU they were given ``machine_bound``; neither figure is then the service's
capacity. A pod's peak memory is its cgroup's since the pod started (page cache included), not the hold's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import psutil

from clouddetect.lab.capacity.targets import PodMetrics
from clouddetect.settings_fields import setting

MIB = 1024 * 1024
PROC_STAT = Path("/proc/stat")
SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class EvidenceSettings:
    """Where a run stops being the service's measure."""

    client_cpu_bound_share: float = setting(
        0.85, "A Locust process busier than this share of a core over the hold makes the run client-bound.",
        low=0, high=1)
    link_bound_share: float = setting(
        0.80, "A client link busier than this share of its rate over the hold makes the run client-bound.",
        low=0, high=1)
    pod_cpu_starved_share: float = setting(
        0.85, "Pods using less than this share of their CPU limit while saturated make the run machine-bound.",
        low=0, high=1)


@dataclass(frozen=True)
class Snapshot:
    """The counters at one moment; ``at_s`` is the middle of the pods' scrape, which takes a while at load."""

    at_s: float
    pods: dict[str, PodMetrics]
    client_cpu_s: dict[int, float]  # by Locust process id
    link_tx_bytes: int | None  # through the client link's interface, each way
    link_rx_bytes: int | None
    host_busy_s: float | None
    host_total_s: float | None


def take(read_pods: Callable[[], dict[str, PodMetrics]], locust: psutil.Process | None,
         link_interface: str | None) -> Snapshot:
    started = time.monotonic()
    pods = read_pods()
    at_s = (started + time.monotonic()) / 2
    busy, total = _host_cpu_s()
    tx, rx = (_interface_bytes(link_interface, d) for d in ("tx", "rx"))
    return Snapshot(at_s, pods, _process_cpu_s(locust), tx, rx, busy, total)


def _process_cpu_s(root: psutil.Process | None) -> dict[int, float]:
    """CPU seconds of Locust and each of its worker processes (``--processes``); one that has just exited is left
    out."""
    if root is None:
        return {}
    found = {}
    for process in [root, *_children(root)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        found[process.pid] = times.user + times.system
    return found


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _interface_bytes(interface: str | None, direction: str) -> int | None:
    if not interface:
        return None
    try:
        return int((SYS_NET / interface / "statistics" / f"{direction}_bytes").read_text())
    except (OSError, ValueError):
        return None


def _host_cpu_s() -> tuple[float | None, float | None]:
    """Busy and total CPU seconds of this machine (every core), from /proc/stat's first line."""
    try:
        ticks = [int(v) for v in PROC_STAT.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None, None
    hertz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / hertz, sum(ticks) / hertz


def _share(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else round(part / whole, 3)


def _grown(after: float | None, before: float | None) -> float | None:
    """How much a counter grew; None when unknown or when it went back (a restarted container starts at zero)."""
    if after is None or before is None or after < before:
        return None
    return after - before


def pod_evidence(before: PodMetrics, after: PodMetrics, seconds: float) -> dict[str, Any]:
    """One pod over the hold: cores used of its limit, share of CFS periods throttled, peak memory of its limit."""
    cpu_s = _grown(after.cpu_seconds, before.cpu_seconds)
    return {
        "cpu_cores_used": None if cpu_s is None else round(cpu_s / seconds, 3),
        "cpu_limit_cores": after.cpu_limit_cores,
        "cpu_throttled_period_share": _share(_grown(after.cpu_throttled_periods, before.cpu_throttled_periods),
                                             _grown(after.cpu_periods, before.cpu_periods)),
        "memory_peak_mib": None if after.memory_peak_bytes is None else round(after.memory_peak_bytes / MIB, 1),
        "memory_limit_mib": None if after.memory_limit_bytes is None else round(after.memory_limit_bytes / MIB, 1),
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(mean(known), 3) if known else None


def evidence(before: Snapshot, after: Snapshot, link_rate_mbit: float | None) -> dict[str, Any]:
    """The run's figures over the hold, their units in their names (the flags are ``bounds``'s)."""
    seconds = after.at_s - before.at_s
    if seconds <= 0:
        raise ValueError(f"the hold's snapshots are {seconds:g} s apart")
    pods = {name: pod_evidence(before.pods[name], metrics, seconds)
            for name, metrics in after.pods.items() if name in before.pods}
    client = [round((cpu - before.client_cpu_s[pid]) / seconds, 3)
              for pid, cpu in after.client_cpu_s.items() if pid in before.client_cpu_s]
    busier = max((grown for grown in (_grown(after.link_tx_bytes, before.link_tx_bytes),
                                      _grown(after.link_rx_bytes, before.link_rx_bytes)) if grown is not None),
                 default=None)
    return {
        "held_s": round(seconds, 1),
        "pods": pods,
        # Pods serving at only one of the two snapshots (gone unready, or new): no figure over the hold.
        "pods_missing": sorted(set(before.pods) ^ set(after.pods)),
        "pod_cpu_cores_used_mean": _mean([p["cpu_cores_used"] for p in pods.values()]),
        "pod_cpu_limit_cores": _mean([p["cpu_limit_cores"] for p in pods.values()]),
        "pod_cpu_throttled_period_share_mean": _mean([p["cpu_throttled_period_share"] for p in pods.values()]),
        "pod_memory_peak_mib_max": max((p["memory_peak_mib"] for p in pods.values() if p["memory_peak_mib"]),
                                       default=None),
        "pod_memory_limit_mib": _mean([p["memory_limit_mib"] for p in pods.values()]),
        "client_cpu_core_share_by_process": client,
        "client_cpu_core_share_max": max(client, default=None),
        "link_utilisation_share": (None if busier is None or not link_rate_mbit
                                   else round(busier * 8 / (link_rate_mbit * 1e6 * seconds), 3)),
        "load_generator_machine_cpu_busy_share": _share(_grown(after.host_busy_s, before.host_busy_s),
                                                        _grown(after.host_total_s, before.host_total_s)),
    }


def bounds(found: dict[str, Any], saturated: bool, thresholds: EvidenceSettings) -> dict[str, Any]:
    """``client_bound`` and ``machine_bound``, with the reasons in words and the thresholds they were judged by.

    A pod short of its quota is the machine's doing only when the service was saturated (a load below capacity
    leaves CPU unused) and the client was not the bottleneck (a starved load does too)."""
    reasons: list[str] = []
    client_cpu, link = found["client_cpu_core_share_max"], found["link_utilisation_share"]
    if client_cpu is not None and client_cpu > thresholds.client_cpu_bound_share:
        reasons.append(f"a Locust process used {client_cpu:.0%} of a core")
    if link is not None and link > thresholds.link_bound_share:
        reasons.append(f"the client's link ran at {link:.0%} of its rate")
    client_bound = bool(reasons)
    used, limit = found["pod_cpu_cores_used_mean"], found["pod_cpu_limit_cores"]
    machine_bound = (saturated and not client_bound and used is not None and bool(limit)
                     and used < thresholds.pod_cpu_starved_share * limit)
    if machine_bound:
        reasons.append(f"the pods used {used:.2f} of their {limit:.2f} CPU on average though saturated: their "
                       "quota did not bind, the nodes' CPU or something outside the pods did")
    return {"client_bound": client_bound, "machine_bound": machine_bound, "bound_reasons": reasons,
            "bound_thresholds": asdict(thresholds)}


def describe(found: dict[str, Any]) -> str:
    """"pod CPU 0.49 of 0.50, throttled 97% of periods, peak 301 of 512 MiB; client CPU 22%; ..." and any bound."""
    pod = []
    if found.get("pod_cpu_cores_used_mean") is not None:
        limit = found.get("pod_cpu_limit_cores")
        pod.append(f"pod CPU {found['pod_cpu_cores_used_mean']:.2f}" + (f" of {limit:.2f}" if limit else ""))
    if found.get("pod_cpu_throttled_period_share_mean") is not None:
        pod.append(f"throttled {found['pod_cpu_throttled_period_share_mean']:.0%} of periods")
    if found.get("pod_memory_peak_mib_max") is not None:
        limit = found.get("pod_memory_limit_mib")
        pod.append(f"peak {found['pod_memory_peak_mib_max']:.0f}" + (f" of {limit:.0f}" if limit else "") + " MiB")
    parts = [", ".join(pod)] if pod else []
    if found.get("client_cpu_core_share_max") is not None:
        parts.append(f"client CPU {found['client_cpu_core_share_max']:.1%}")
    if found.get("link_utilisation_share") is not None:
        parts.append(f"link {found['link_utilisation_share']:.0%} of its rate")
    if found.get("load_generator_machine_cpu_busy_share") is not None:
        parts.append(f"load generator's machine {found['load_generator_machine_cpu_busy_share']:.0%} busy")
    if found.get("pods_missing"):
        parts.append(f"no figures for {', '.join(found['pods_missing'])} (serving at one snapshot only)")
    bound = [kind for kind in ("client", "machine") if found.get(f"{kind}_bound")]
    if bound:
        parts.append(" and ".join(bound) + "-bound: " + "; ".join(found.get("bound_reasons") or []))
    return "; ".join(parts)
