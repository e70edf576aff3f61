"""Prometheus metrics of one serving process, in a registry of its own so each app (and test) starts at zero."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# One image costs ~0.1 s of CPU alone and seconds under load; buckets reach past a 30 s client timeout.
_LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60)
_INFERENCE_BUCKETS_S = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 1)
# Names the lab reads back from /metrics too.
REQUESTS = "clouddetect_requests"
IN_FLIGHT = "clouddetect_requests_in_flight"


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

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
