"""Where the service under test runs: a Kubernetes Deployment the lab scales, or one fixed URL.

Both answer the same small protocol, so the experiment runner does not care which it drives. Per-pod figures come
from each pod's Prometheus ``/metrics``: requests answered (by status) and requests in flight, and the counters of
the pod's own cgroup (CPU used and throttled, peak memory, its limits) that show what bound it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

from clouddetect import metrics
from clouddetect.config import Settings
from clouddetect.settings_fields import setting

# A counter's samples carry the _total suffix in the text format.
REQUESTS_SAMPLE = metrics.REQUESTS + "_total"
IN_FLIGHT_SAMPLE = metrics.IN_FLIGHT
# PodMetrics' resource fields and the sample each is read from, in order of preference (a service without the cgroup
# counters still tells its own process's CPU time).
RESOURCE_SAMPLES = {
    "cpu_seconds": (metrics.CGROUP_CPU_USAGE + "_total", metrics.PROCESS_CPU + "_total"),
    "cpu_periods": (metrics.CGROUP_CPU_PERIODS + "_total",),
    "cpu_throttled_periods": (metrics.CGROUP_CPU_THROTTLED_PERIODS + "_total",),
    "memory_peak_bytes": (metrics.CGROUP_MEMORY_PEAK,),
    "cpu_limit_cores": (metrics.CPU_LIMIT,),
    "memory_limit_bytes": (metrics.MEMORY_LIMIT,),
}

T = TypeVar("T")


class TargetError(RuntimeError):
    """The service cannot be scaled, reached or read."""


@dataclass(frozen=True)
class PodMetrics:
    requests_by_status: dict[str, int]
    in_flight: int
    cpu_seconds: float | None = None
    cpu_periods: float | None = None
    cpu_throttled_periods: float | None = None
    memory_peak_bytes: float | None = None
    cpu_limit_cores: float | None = None
    memory_limit_bytes: float | None = None

    @property
    def requests(self) -> int:
        return sum(self.requests_by_status.values())


class Target(Protocol):
    def scale(self, pods: int) -> None:
        """Ask for this many pods."""

    def wait_ready(self, pods: int) -> list[str]:
        """Block until exactly this many pods are ready and no others remain; returns their names."""

    def pods(self) -> list[str]:
        """Names of the pods serving now."""

    def endpoint(self) -> str:
        """Base URL the load generator sends requests to."""

    def pod_metrics(self) -> dict[str, PodMetrics]:
        """Each serving pod's counters, by pod name."""

    def describe(self) -> dict[str, Any]:
        """What serves: each pod's CPU and memory where known, and the inference engine the service reports."""

    def placement(self) -> dict[str, dict[str, Any]]:
        """Each serving pod's node, and the CPU and engine its ``/readyz`` reports (see ``placed``)."""


def parse_metrics(text: str) -> PodMetrics:
    by_status: dict[str, int] = {}
    in_flight = 0
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS_SAMPLE:
                by_status[sample.labels["status"]] = int(sample.value)
            elif sample.name == IN_FLIGHT_SAMPLE:
                in_flight = int(sample.value)
            else:
                values[sample.name] = sample.value
    resources = {field: next((values[n] for n in names if n in values), None)
                 for field, names in RESOURCE_SAMPLES.items()}
    return PodMetrics(by_status, in_flight, **resources)


def engine_name(readyz: Any) -> str | None:
    """The engine a /readyz answer names, with its precision and Winograd ("openvino/f32"); None if it names none."""
    if not isinstance(readyz, dict) or not isinstance(readyz.get("engine"), str):
        return None
    engine = readyz["engine"] + (f"/{readyz['precision']}" if isinstance(readyz.get("precision"), str) else "")
    if readyz["engine"] == "opencv" and isinstance(readyz.get("winograd"), bool):
        engine += f" Winograd {'on' if readyz['winograd'] else 'off'}"
    return engine


def reported_engine(readyz: Any) -> str | None:
    """What a service says in its /readyz answer runs its forward pass, in one line: the engine, its precision and
    Winograd where it says them, and the timings it chose by (``engine=auto``); None from a service that does not
    say."""
    engine = engine_name(readyz)
    if engine is None:
        return None
    trials = [t for t in readyz.get("trials") or [] if isinstance(t, dict)]
    if not trials:
        return engine
    timings = "; ".join(f"{t.get('engine')} {t.get('cpu_ms_per_forward')} CPU ms per forward: {t.get('verdict')}"
                        for t in trials)
    return f"{engine}, chosen by timing ({timings})"


def placed(node: str | None, readyz: Any) -> dict[str, Any]:
    """Where one pod runs: its node, that node's CPU model and instruction sets, and the engine it kept."""
    cpu = readyz.get("cpu") if isinstance(readyz, dict) and isinstance(readyz.get("cpu"), dict) else {}
    return {"node": node, "cpu_model": cpu.get("model"), "isa": cpu.get("isa"), "engine": engine_name(readyz)}


def poll(check: Callable[[], T | None], timeout_s: float, interval_s: float, waiting_for: str) -> T:
    """The first non-None answer of ``check``, asked every ``interval_s`` until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if answer is not None:
            return answer
        if time.monotonic() >= deadline:
            raise TargetError(f"timed out after {timeout_s:g} s waiting for {waiting_for}")
        time.sleep(interval_s)


class FixedUrl:
    """One endpoint that is measured as it is (a local server, a container, a Service): it cannot be scaled.

    Its pod count is a label given by the caller. ``/metrics`` and ``/healthz`` are read through the same URL, so
    per-instance figures are exact only when one instance answers there.
    """

    def __init__(self, url: str, pods: int, ready_timeout_s: float, poll_interval_s: float, http_timeout_s: float):
        self.url = url.rstrip("/")
        self.replicas = pods
        self.ready_timeout_s = ready_timeout_s
        self.poll_interval_s = poll_interval_s
        self.http_timeout_s = http_timeout_s

    def scale(self, pods: int) -> None:
        if pods != self.replicas:
            raise TargetError(f"{self.url} is a fixed endpoint labelled {self.replicas} pods; it cannot run {pods}")

    def wait_ready(self, pods: int) -> list[str]:
        self.scale(pods)
        return poll(self._ready_instance, self.ready_timeout_s, self.poll_interval_s, f"{self.url}/readyz")

    def _ready_instance(self) -> list[str] | None:
        try:
            response = requests.get(self.url + "/readyz", timeout=self.http_timeout_s)
        except requests.RequestException:
            return None
        return [response.json()["instance"]] if response.status_code == 200 else None

    def pods(self) -> list[str]:
        return [self._get("/healthz").json()["instance"]]

    def endpoint(self) -> str:
        return self.url

    def pod_metrics(self) -> dict[str, PodMetrics]:
        return {self.pods()[0]: parse_metrics(self._get("/metrics").text)}

    def describe(self) -> dict[str, Any]:
        return {"pod_cpu": None, "pod_memory": None, "engine": reported_engine(self._readyz())}

    def placement(self) -> dict[str, dict[str, Any]]:
        readyz = self._readyz()
        instance = readyz.get("instance") if isinstance(readyz, dict) else None
        return {instance: placed(None, readyz)} if isinstance(instance, str) else {}

    def _readyz(self) -> Any:
        try:
            return requests.get(self.url + "/readyz", timeout=self.http_timeout_s).json()
        except (requests.RequestException, ValueError):
            return None

    def _get(self, path: str) -> requests.Response:
        try:
            response = requests.get(self.url + path, timeout=self.http_timeout_s)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise TargetError(f"cannot read {self.url}{path}: {exc}") from None
        return response


def is_serving(pod: Any) -> bool:
    """Ready and not terminating: the Service sends it requests."""
    conditions = pod.status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    return ready and pod.metadata.deletion_timestamp is None


def ready_pod_names(pods: Iterable[Any], wanted: int) -> list[str] | None:
    """The names when exactly ``wanted`` pods exist, all serving (old ones gone); otherwise None."""
    pods = list(pods)
    if len(pods) != wanted or not all(is_serving(p) for p in pods):
        return None
    return sorted(p.metadata.name for p in pods)


@dataclass(frozen=True)
class KubernetesSettings:
    """Which Deployment the lab scales and loads, and how it reaches the cluster."""

    namespace: str = setting("default", "Kubernetes namespace of the service.")
    deployment: str = setting("clouddetect", "Deployment to scale.")
    service: str = setting("clouddetect", "Service whose NodePort gets the load.")
    service_url: str | None = setting(None, "URL the load goes to on Kubernetes [default: the Service's NodePort on "
                                            "a node].")
    pod_port: int = setting(Settings.port, "Pods' port serving /metrics.")
    ready_timeout_s: float = setting(600.0, "Time allowed for the pods to become ready after scaling.", low=0)
    metrics_timeout_s: float = setting(10.0, "Time allowed to read one pod's /metrics through the API server.",
                                       low=0, low_open=True)
    kubeconfig: Path | None = setting(None, "[default: as kubectl finds it]", file=True)
    context: str | None = setting(None, "kubeconfig context [default: the current one].")


class Kubernetes:
    """A Deployment scaled through the API server, with kubeconfig found as kubectl finds it.

    Pods' ``/metrics`` are read through the API server's pod proxy, so the lab needs no route to the pod network.
    The load goes to ``service_url``, or else to the Service's NodePort on the first node's internal address.
    """

    def __init__(self, settings: KubernetesSettings, poll_interval_s: float):
        from kubernetes import client, config  # only the Kubernetes platform needs the client

        try:
            config.load_kube_config(config_file=settings.kubeconfig and str(settings.kubeconfig),
                                    context=settings.context)
        except (config.ConfigException, OSError) as exc:
            raise TargetError(f"no usable kubeconfig: {exc}") from None
        self.apps = client.AppsV1Api()
        self.core = client.CoreV1Api()
        self.namespace = settings.namespace
        self.deployment = settings.deployment
        self.service = settings.service
        self.service_url = settings.service_url
        self.pod_port = settings.pod_port
        self.ready_timeout_s = settings.ready_timeout_s
        self.metrics_timeout_s = settings.metrics_timeout_s
        self.poll_interval_s = poll_interval_s

    def _selector(self) -> str:
        spec = self.apps.read_namespaced_deployment(self.deployment, self.namespace).spec
        return ",".join(f"{key}={value}" for key, value in sorted(spec.selector.match_labels.items()))

    def _listed_pods(self) -> list[Any]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=self._selector()).items

    def scale(self, pods: int) -> None:
        self.apps.patch_namespaced_deployment_scale(self.deployment, self.namespace, {"spec": {"replicas": pods}})

    def wait_ready(self, pods: int) -> list[str]:
        return poll(lambda: ready_pod_names(self._listed_pods(), pods), self.ready_timeout_s, self.poll_interval_s,
                    f"exactly {pods} ready pods of deployment {self.namespace}/{self.deployment}")

    def pods(self) -> list[str]:
        return sorted(p.metadata.name for p in self._listed_pods() if is_serving(p))

    def endpoint(self) -> str:
        if self.service_url:
            return self.service_url.rstrip("/")
        service = self.core.read_namespaced_service(self.service, self.namespace)
        node_ports = [p.node_port for p in service.spec.ports or [] if p.node_port]
        if not node_ports:
            raise TargetError(f"service {self.namespace}/{self.service} has no NodePort; pass --service-url")
        for node in self.core.list_node().items:
            for address in node.status.addresses or []:
                if address.type == "InternalIP":
                    return f"http://{address.address}:{node_ports[0]}"
        raise TargetError("no node has an InternalIP; pass --service-url")

    def pod_metrics(self) -> dict[str, PodMetrics]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        metrics = {}
        for name in self.pods():
            try:
                response = self.core.connect_get_namespaced_pod_proxy_with_path(
                    f"{name}:{self.pod_port}", self.namespace, "metrics", _preload_content=False,
                    _request_timeout=self.metrics_timeout_s)
            except (ApiException, HTTPError) as exc:
                raise TargetError(f"cannot read {name}'s /metrics: {exc}") from None
            metrics[name] = parse_metrics(response.data.decode())
        return metrics

    def describe(self) -> dict[str, Any]:
        spec = self.apps.read_namespaced_deployment(self.deployment, self.namespace).spec.template.spec
        resources = spec.containers[0].resources
        limits = (resources.limits or {}) if resources else {}
        return {"pod_cpu": limits.get("cpu"), "pod_memory": limits.get("memory"), "engine": self._engine()}

    def _engine(self) -> str | None:
        return next((reported_engine(self._readyz(name)) for name in self.pods()[:1]), None)

    def placement(self) -> dict[str, dict[str, Any]]:
        return {p.metadata.name: placed(p.spec.node_name, self._readyz(p.metadata.name))
                for p in self._listed_pods() if is_serving(p)}

    def _readyz(self, pod: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:{self.pod_port}", self.namespace, "readyz", _preload_content=False
            )
            return json.loads(response.data)
        except (ApiException, ValueError):
            return None
