"""The fault lab's parts that need no cluster: the load loop against a real server, and the figures it derives."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clouddetect.lab.faults import (
    ClusterSample,
    FaultSettings,
    LoadLoop,
    RequestOutcome,
    Timeline,
    capacity_back,
    fault_result,
)
from support import LiveServer, free_port

LOAD_S = 2.0
REQUEST_TIMEOUT_S = 10.0
SETTINGS = FaultSettings(users=2, before_s=1.0, after_s=1.0, recovery_timeout_s=60.0, request_timeout_s=10.0,
                         poll_interval_s=0.5)


@pytest.mark.slow
def test_load_loop_records_every_answer_of_a_real_server(server: LiveServer, images: list[Path]) -> None:
    with LoadLoop(server.url, images[0].parent, 2, REQUEST_TIMEOUT_S, time.monotonic) as load:
        time.sleep(LOAD_S)
    assert load.outcomes and all(o.error is None for o in load.outcomes)
    assert all(o.ended_s >= o.started_s for o in load.outcomes)


def test_load_loop_records_refused_connections_as_failures(images: list[Path]) -> None:
    with LoadLoop(f"http://127.0.0.1:{free_port()}", images[0].parent, 1, REQUEST_TIMEOUT_S, time.monotonic) as load:
        time.sleep(0.2)
    assert load.outcomes and {o.error for o in load.outcomes} == {"connection error: ConnectionError"}
    assert all("Connection refused" in (o.detail or "") for o in load.outcomes)  # what the client was told


def sample(at_s: float, ready: int, pods: dict[str, int], endpoints: dict[str, int] | None = None) -> ClusterSample:
    return ClusterSample(at_s, ready, pods, pods if endpoints is None else endpoints)


def test_capacity_is_back_when_all_pods_serve_again_after_a_dip() -> None:
    samples = [sample(9, 4, {}), sample(10.5, 3, {}), sample(11, 3, {}), sample(14.2, 4, {})]
    assert capacity_back(samples, 10.0, 4) == pytest.approx(4.2)
    assert capacity_back(samples[:1], 10.0, 4) is None


def test_a_lost_node_summary_times_endpoints_and_rescheduling() -> None:
    timeline = Timeline([
        sample(10.0, 4, {"w1": 2, "w2": 2}),
        sample(20.0, 2, {"w1": 2, "w2": 2}, {"w1": 2}),
        sample(35.0, 4, {"w1": 4}),
    ])
    outcomes = [RequestOutcome(1.0, 2.0, None), RequestOutcome(9.0, 9.5, None),
                RequestOutcome(10.5, 15.0, "ReadTimeout", "Read timed out.")]
    result = fault_result("node-loss", {"node": "w2"}, outcomes, timeline, 10.0, 4, SETTINGS)
    assert result["failed_requests"] == 1 and result["failures_by_kind"] == {"ReadTimeout": 1}
    assert result["endpoints_off_lost_node_s"] == 10.0
    assert result["rescheduled_s"] == 25.0 == result["capacity_back_s"]
    assert result["first_failure_s"] == 0.5 and result["last_failure_s"] == 5.0
    assert result["failures"] == [
        {"started_s": 0.5, "ended_s": 5.0, "error": "ReadTimeout", "detail": "Read timed out."}]
    assert result["requests_per_s_before"] == 0.2
