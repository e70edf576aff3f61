"""Prometheus metrics of one serving process, in a registry of its own so each app (and test) starts at zero."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clouddetect import cgroup_limits

# One image costs ~0.1 s of CPU alone and seconds under load; buckets reach past a 30 s client timeout.
_LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60)
_INFERENCE_BUCKETS_S = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 1)
# Names the lab reads back from /metrics too.
REQUESTS = "clouddetect_requests"
IN_FLIGHT = "clouddetect_requests_in_flight"
CGROUP_CPU_USAGE = "clouddetect_cgroup_cpu_usage_seconds"
CGROUP_CPU_PERIODS = "clouddetect_cgroup_cpu_periods"
CGROUP_CPU_THROTTLED_PERIODS = "clouddetect_cgroup_cpu_throttled_periods"
CGROUP_CPU_THROTTLED = "clouddetect_cgroup_cpu_throttled_seconds"
CGROUP_MEMORY_PEAK = "clouddetect_cgroup_memory_peak_bytes"
CPU_LIMIT = "clouddetect_cpu_limit_cores"
MEMORY_LIMIT = "clouddetect_memory_limit_bytes"
PROCESS_CPU = "process_cpu_seconds"


class CgroupCollector(Collector):
    """The pod's own cgroup counters, read at each scrape: the evidence of what bound it (its CPU quota, its memory
    limit), which no request counter shows."""

    def collect(self) -> Iterator[Metric]:
        used = cgroup_limits.usage()
        cpu_limit = cgroup_limits.cpu_limit_cores()
        counters = (
            (CGROUP_CPU_USAGE, "CPU time used by every process of the cgroup that carries the CPU quota.",
             used.cpu_usage_s),
            (CGROUP_CPU_PERIODS, "CFS periods in which that cgroup ran.", used.cpu_periods),
            (CGROUP_CPU_THROTTLED_PERIODS, "Of those, periods in which it used up its quota and was stopped.",
             used.cpu_throttled_periods),
            (CGROUP_CPU_THROTTLED, "Time its processes were stopped by the quota.", used.cpu_throttled_s),
        )
        for name, documentation, value in counters:
            if value is not None:
                yield CounterMetricFamily(name, documentation, value=value)
        gauges = (
            (CGROUP_MEMORY_PEAK, "Most memory the cgroup that carries the memory limit has held since it was made.",
             used.memory_peak_bytes),
            (CPU_LIMIT, "The smallest CPU quota on this process's cgroup path, in cores (the counters above come from "
             "the innermost cgroup with a quota, usually the same).", cpu_limit),
            (MEMORY_LIMIT, "The memory this process may use: the smallest cgroup limit, or the machine's memory.",
             cgroup_limits.memory_limit_bytes()),
        )
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            REQUESTS, "Detection requests answered, by HTTP status.", ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clouddetect_request_duration_seconds", "Time from request to answer, queueing included.",
            buckets=_LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.inference = Histogram(
            "clouddetect_inference_duration_seconds",
            "Time the network is held for one image: its input blob and forward pass.",
            buckets=_INFERENCE_BUCKETS_S, registry=self.registry,
        )
        self.in_flight = Gauge(
            IN_FLIGHT, "Detection requests being served now.", registry=self.registry
        )
        self.refused = Counter(
            "clouddetect_refused_before_body",
            "Detection requests refused on arrival, before their body was read or a thread taken, by reason.",
            ["reason"], registry=self.registry,
        )
        self.dropped = Counter(
            "clouddetect_dropped", "Admitted detection requests never run, by reason: their deadline passed "
            "(deadline_exceeded) or their client left (client_closed_request) before their forward pass.",
            ["reason"], registry=self.registry,
        )
        self.objects = Counter(
            "clouddetect_objects_detected", "Objects found, by label.", ["label"], registry=self.registry
        )

        ProcessCollector(registry=self.registry)
        self.registry.register(CgroupCollector())

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
