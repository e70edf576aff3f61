"""Reading pods' metrics and readiness: the real service's /metrics text and Kubernetes' own pod objects."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodCondition, V1PodStatus

from clouddetect import machine
from clouddetect.lab.capacity.experiment import served
from clouddetect.lab.capacity.targets import (
    FixedUrl,
    TargetError,
    engine_name,
    parse_metrics,
    ready_pod_names,
    reported_engine,
)
from clouddetect.verdicts import ENDPOINT
from support import live_server, request_body

READY_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
HTTP_TIMEOUT_S = 10.0


def test_metrics_count_answers_by_status(client: FlaskClient, images: list[Path]) -> None:
    client.post(ENDPOINT, json=request_body(images[0]))
    client.post(ENDPOINT, json=request_body(images[1]))
    client.post(ENDPOINT, json={"id": "x"})
    metrics = parse_metrics(client.get("/metrics").get_data(as_text=True))
    assert metrics.requests_by_status == {"200": 2, "400": 1}
    assert metrics.requests == 3
    assert metrics.in_flight == 0
    # The resource counters the lab's evidence comes from are there too, whatever cgroup this runs in.
    assert metrics.cpu_seconds and metrics.cpu_seconds > 0
    assert metrics.memory_limit_bytes and metrics.memory_limit_bytes > 0


def test_a_service_without_resource_counters_reads_as_unknown_not_zero() -> None:
    metrics = parse_metrics('clouddetect_requests_total{status="200"} 4.0\nclouddetect_requests_in_flight 1.0\n')
    assert (metrics.requests, metrics.in_flight) == (4, 1)
    assert metrics.cpu_seconds is None and metrics.cpu_throttled_periods is None and metrics.memory_peak_bytes is None


def test_the_pods_cgroup_cpu_is_preferred_to_its_process_cpu() -> None:
    text = ("process_cpu_seconds_total 3.0\nclouddetect_cgroup_cpu_usage_seconds_total 7.5\n"
            "clouddetect_cgroup_cpu_periods_total 90.0\nclouddetect_cgroup_cpu_throttled_periods_total 80.0\n"
            "clouddetect_cgroup_memory_peak_bytes 1048576.0\nclouddetect_cpu_limit_cores 0.5\n")
    metrics = parse_metrics(text)
    assert (metrics.cpu_seconds, metrics.cpu_periods, metrics.cpu_throttled_periods) == (7.5, 90, 80)
    assert (metrics.memory_peak_bytes, metrics.cpu_limit_cores) == (1048576, 0.5)
    assert parse_metrics("process_cpu_seconds_total 3.0\n").cpu_seconds == 3.0


def pod(name: str, ready: bool = True, terminating: bool = False) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(name=name, deletion_timestamp=datetime.now(UTC) if terminating else None),
        status=V1PodStatus(conditions=[V1PodCondition(type="Ready", status="True" if ready else "False")]),
    )


def test_exactly_the_wanted_pods_all_ready_and_none_terminating() -> None:
    assert ready_pod_names([pod("b"), pod("a")], 2) == ["a", "b"]
    assert ready_pod_names([pod("a"), pod("b", ready=False)], 2) is None
    assert ready_pod_names([pod("a"), pod("b"), pod("old", terminating=True)], 2) is None
    assert ready_pod_names([pod("a")], 2) is None


def test_the_engine_is_what_the_service_reports_or_unknown() -> None:
    assert reported_engine({"status": "ready", "engine": "openvino"}) == "openvino"
    assert reported_engine({"engine": "opencv", "precision": "f32", "winograd": False}) == "opencv/f32 Winograd off"
    auto = {"engine": "openvino", "precision": "f32", "winograd": False, "trials": [
        {"engine": "openvino/f32", "cpu_ms_per_forward": 61.0, "footprint_mib": 150.0, "verdict": "kept"},
        {"engine": "opencv/f32 Winograd off", "cpu_ms_per_forward": 157.1, "footprint_mib": 90.0, "verdict": "slower"}]}
    assert reported_engine(auto) == ("openvino/f32, chosen by timing (openvino/f32 61.0 CPU ms per forward: kept; "
                                      "opencv/f32 Winograd off 157.1 CPU ms per forward: slower)")
    assert reported_engine({"status": "ready"}) is None
    assert reported_engine(["not", "an", "object"]) is None


@pytest.mark.slow
def test_fixed_url_reads_its_one_instance(tmp_path: Path, images: list[Path]) -> None:
    import requests

    with live_server(tmp_path, env={"POD_NAME": "fixed-pod"}) as server:
        platform = FixedUrl(server.url, 1, READY_TIMEOUT_S, POLL_INTERVAL_S, HTTP_TIMEOUT_S)
        assert platform.wait_ready(1) == ["fixed-pod"]
        before = platform.pod_metrics()
        requests.post(server.url + ENDPOINT, json=request_body(images[0]), timeout=HTTP_TIMEOUT_S)
        assert served(before, platform.pod_metrics()) == {"fixed-pod": 1}
        with pytest.raises(TargetError, match="cannot run 2"):
            platform.scale(2)
        readyz = requests.get(server.url + "/readyz", timeout=HTTP_TIMEOUT_S).json()
        assert platform.describe() == {"pod_cpu": None, "pod_memory": None, "engine": reported_engine(readyz)}
        assert platform.placement() == {"fixed-pod": {"node": None, "cpu_model": machine.cpu()["model"],
                                                      "isa": machine.cpu()["isa"], "engine": engine_name(readyz)}}
