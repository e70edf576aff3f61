"""What bound a run: differences of two snapshots over the hold, and the client- and machine-bound flags."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from clouddetect.lab.capacity.evidence import EvidenceSettings, Snapshot, bounds, describe, evidence, take
from clouddetect.lab.capacity.locust_runs import phase_of
from clouddetect.lab.capacity.targets import PodMetrics

MIB = 1024 * 1024
HOLD_S = 20.0
LINK_MBIT = 100.0
CHILD_START_TIMEOUT_S = 10.0


def pod(cpu_s: float, periods: int, throttled: int, peak_mib: float = 300, limit_cores: float = 0.5) -> PodMetrics:
    return PodMetrics({"200": 1}, 0, cpu_seconds=cpu_s, cpu_periods=periods, cpu_throttled_periods=throttled,
                      memory_peak_bytes=peak_mib * MIB, cpu_limit_cores=limit_cores, memory_limit_bytes=512 * MIB)


def snapshot(at_s: float, pods: dict[str, PodMetrics], client_cpu_s: float, link_bytes: tuple[int, int] | None = None,
             busy_s: float = 0.0) -> Snapshot:
    tx, rx = link_bytes or (None, None)
    return Snapshot(at_s, pods, {101: client_cpu_s}, tx, rx, busy_s, at_s * 2)


def judged(before: Snapshot, after: Snapshot, link_mbit: float | None = None, saturated: bool = True) -> dict:
    """The evidence with its flags, as a run records it."""
    found = evidence(before, after, link_mbit)
    return {**found, **bounds(found, saturated, EvidenceSettings())}


def test_a_pod_at_its_quota_is_the_bound_and_nothing_else_is() -> None:
    before = snapshot(0.0, {"a": pod(10.0, 100, 10), "b": pod(12.0, 100, 0)}, 1.0, busy_s=0.0)
    after = snapshot(HOLD_S, {"a": pod(20.0, 300, 200, peak_mib=301), "b": pod(21.8, 300, 180)}, 5.4, busy_s=30.0)
    found = judged(before, after)
    assert found["pods"]["a"] == {"cpu_cores_used": 0.5, "cpu_limit_cores": 0.5, "cpu_throttled_period_share": 0.95,
                                  "memory_peak_mib": 301.0, "memory_limit_mib": 512.0}
    assert found["pod_cpu_cores_used_mean"] == pytest.approx(0.495)
    assert found["pod_cpu_throttled_period_share_mean"] == pytest.approx(0.925)
    assert found["pod_memory_peak_mib_max"] == 301.0
    assert found["client_cpu_core_share_max"] == 0.22
    assert found["load_generator_machine_cpu_busy_share"] == 0.75
    assert found["link_utilisation_share"] is None
    assert (found["client_bound"], found["machine_bound"], found["bound_reasons"]) == (False, False, [])
    assert describe(found) == ("pod CPU 0.49 of 0.50, throttled 92% of periods, peak 301 of 512 MiB; client CPU 22.0%; "
                               "load generator's machine 75% busy")


def test_a_busy_locust_or_a_full_link_makes_the_run_client_bound() -> None:
    pods = {"a": pod(0.0, 0, 0)}, {"a": pod(10.0, 200, 190)}
    sent = int(LINK_MBIT * 1e6 / 8 * HOLD_S * 0.9)  # 90% of the link's rate over the hold, one way
    found = judged(snapshot(0.0, pods[0], 0.0, link_bytes=(5_000_000, 0)),
                   snapshot(HOLD_S, pods[1], 18.0, link_bytes=(5_000_000 + sent, 400_000)), LINK_MBIT)
    assert found["client_bound"] and not found["machine_bound"]
    assert found["link_utilisation_share"] == 0.9
    assert found["bound_reasons"] == ["a Locust process used 90% of a core", "the client's link ran at 90% of its rate"]
    assert "client-bound: a Locust process used 90% of a core" in describe(found)


def test_the_link_is_judged_by_its_busier_direction_over_the_hold() -> None:
    """Cumulative counters say nothing of the hold: the receive side had carried more before it began."""
    pods = {"a": pod(0.0, 0, 0)}, {"a": pod(10.0, 200, 190)}
    found = evidence(snapshot(0.0, pods[0], 0.0, link_bytes=(1_000, 900_000_000)),
                     snapshot(HOLD_S, pods[1], 1.0, link_bytes=(125_001_000, 900_500_000)), LINK_MBIT)
    assert found["link_utilisation_share"] == 0.5


def test_pods_short_of_their_quota_while_saturated_make_the_run_machine_bound() -> None:
    before, after = {"a": pod(0.0, 0, 0), "b": pod(0.0, 0, 0)}, {"a": pod(6.0, 200, 20), "b": pod(6.0, 200, 10)}
    found = judged(snapshot(0.0, before, 0.0), snapshot(HOLD_S, after, 1.0))
    assert found["machine_bound"] and not found["client_bound"]
    assert found["bound_reasons"] == ["the pods used 0.30 of their 0.50 CPU on average though saturated: their quota "
                                      "did not bind, the nodes' CPU or something outside the pods did"]


@pytest.mark.parametrize(("saturated", "client_cpu_s"), [(False, 1.0), (True, 19.0)])
def test_pods_short_of_their_quota_are_not_the_machines_doing_below_capacity_or_behind_a_busy_client(
        saturated: bool, client_cpu_s: float) -> None:
    before, after = {"a": pod(0.0, 0, 0)}, {"a": pod(6.0, 200, 20)}
    found = judged(snapshot(0.0, before, 0.0), snapshot(HOLD_S, after, client_cpu_s), saturated=saturated)
    assert not found["machine_bound"]
    assert found["client_bound"] is (client_cpu_s / HOLD_S > EvidenceSettings().client_cpu_bound_share)


def test_a_pod_serving_at_one_snapshot_only_or_restarted_gives_no_figure() -> None:
    before = {"a": pod(50.0, 500, 400), "gone": pod(1.0, 10, 5)}
    after = {"a": pod(1.0, 10, 8), "new": pod(2.0, 20, 10)}  # "a" restarted: its counters began again
    found = evidence(snapshot(0.0, before, 0.0), snapshot(HOLD_S, after, 1.0), None)
    assert found["pods_missing"] == ["gone", "new"]
    assert found["pods"]["a"]["cpu_cores_used"] is None and found["pods"]["a"]["cpu_throttled_period_share"] is None
    assert found["pod_cpu_cores_used_mean"] is None
    assert "no figures for gone, new" in describe(found)


def test_a_service_without_cgroup_counters_gives_no_pod_evidence_and_no_flag() -> None:
    bare = PodMetrics({"200": 3}, 0)
    found = judged(snapshot(0.0, {"a": bare}, 0.0), snapshot(HOLD_S, {"a": bare}, 1.0))
    assert found["pod_cpu_cores_used_mean"] is None and found["pod_cpu_throttled_period_share_mean"] is None
    assert not found["machine_bound"]
    assert describe(found) == "client CPU 5.0%; load generator's machine 0% busy"


def test_a_snapshot_reads_a_real_process_tree_and_this_machine() -> None:
    """A parent and a child spinning: both processes' CPU is counted, and /proc/stat moves."""
    spin = "import time\nend = time.monotonic() + 3.0\nwhile time.monotonic() < end: pass"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys\n"
                               f"child = subprocess.Popen([sys.executable, '-c', {spin!r}])\n{spin}\nchild.wait()"])
    try:
        locust = psutil.Process(parent.pid)
        deadline = time.monotonic() + CHILD_START_TIMEOUT_S
        while not locust.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = take(dict, locust, None)
        time.sleep(0.5)
        second = take(dict, locust, "lo")
    finally:
        parent.wait()
    assert len(first.client_cpu_s) == len(second.client_cpu_s) == 2
    assert all(second.client_cpu_s[pid] > first.client_cpu_s[pid] for pid in second.client_cpu_s)
    assert second.host_busy_s is not None and first.host_busy_s is not None
    assert second.host_busy_s > first.host_busy_s
    assert second.host_total_s and second.host_total_s > second.host_busy_s
    assert first.link_tx_bytes is None and second.link_tx_bytes is not None and second.link_rx_bytes is not None


@pytest.mark.parametrize(("line", "phase"), [
    ("12 s, holding 40 users", "holding"),
    ("30 s, stopping; waiting for the requests in flight", "stopping"),
    ("5 s, 3 users, 10 requests, 0 failures, 1.0 req/s, avg 10 ms", None),
    ("saturated at 4.0 req/s; jumping to 12 users", None),
])
def test_the_lab_hears_the_hold_start_and_the_step_stop(line: str, phase: str | None) -> None:
    assert phase_of(line) == phase
