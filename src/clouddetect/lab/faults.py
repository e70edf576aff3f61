"""What users see when a pod or a node goes away under steady load: failed requests, and how long recovery takes.

A closed loop of users sends the test images through the Service, each user on a keep-alive connection of its own
(as browsers and Locust's users do), while one fault is injected: a pod deleted, a rolling restart, or a node lost
(stopped by a command the caller gives, e.g. powering off a VM). Every request is recorded with its time and
outcome, and the Deployment's pods and the Service's endpoints are sampled meanwhile; the result is one JSON file
the report can read.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import requests

from clouddetect.images import default_folder, encode_file, image_files
from clouddetect.lab.capacity.targets import Kubernetes, KubernetesSettings, TargetError, is_serving, poll
from clouddetect.settings_fields import click_options, setting
from clouddetect.verdicts import DEFAULT_REQUEST_TIMEOUT_S, ENDPOINT, TIMEOUT_HEADER, failure_kind

FAULTS = ("pod-delete", "rollout-restart", "node-loss")
DETAIL_CHARS = 500  # of a failed request's answer or exception, kept in the result


@dataclass(frozen=True)
class FaultSettings:
    users: int = setting(8, "Closed-loop users.", low=1)
    before_s: float = setting(10.0, "Steady load before the fault.", low=0)
    after_s: float = setting(5.0, "Load kept up once the Deployment is whole again.", low=0)
    recovery_timeout_s: float = setting(300.0, "Most time to wait for the Deployment to be whole again after the "
                                               "fault.", low=0)
    request_timeout_s: float = setting(DEFAULT_REQUEST_TIMEOUT_S, "An answer slower than this is a failed request.",
                                       low=0, low_open=True)
    poll_interval_s: float = setting(0.5, "Time between samples of the pods and the Service's endpoints.", low=0,
                                     low_open=True)


@dataclass(frozen=True)
class RequestOutcome:
    started_s: float
    ended_s: float
    error: str | None  # the failure's kind (verdicts.failure_kind); None: a timely answer that keeps the contract
    detail: str | None = None  # what the client was told, to explain a failure


@dataclass
class ClusterSample:
    at_s: float
    ready_pods: int
    pods_by_node: dict[str, int]
    endpoint_nodes: dict[str, int]


@dataclass
class Timeline:
    samples: list[ClusterSample] = field(default_factory=list)


class LoadLoop:
    """``users`` threads sending images back to back until stopped; each keeps one session (keep-alive)."""

    def __init__(self, url: str, images: Path, users: int, request_timeout_s: float, clock: Callable[[], float]):
        self.url = url.rstrip("/") + ENDPOINT
        self.bodies = [encode_file(path) for path in image_files(images)]
        self.users = users
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self.outcomes: list[RequestOutcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(users)]

    def __enter__(self) -> LoadLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _user(self, index: int) -> None:
        session = requests.Session()
        sent = index
        while not self._stop.is_set():
            body = {"id": str(uuid.uuid4()), "image": self.bodies[sent % len(self.bodies)]}
            sent += self.users
            started = self.clock()
            detail = None
            try:
                response = session.post(self.url, json=body, timeout=self.request_timeout_s,
                                        headers={TIMEOUT_HEADER: f"{self.request_timeout_s:g}"})
                error = failure_kind(response.status_code, response.text, body["id"], self.clock() - started,
                                     self.request_timeout_s)
                if error:
                    detail = response.text[:DETAIL_CHARS]
            except requests.RequestException as exc:
                error = failure_kind(0, None, body["id"], self.clock() - started, self.request_timeout_s, exc)
                detail = str(exc)[:DETAIL_CHARS]
            self.outcomes.append(RequestOutcome(started, self.clock(), error, detail))


class Cluster(Kubernetes):
    """The lab's Deployment on Kubernetes, and what a fault needs besides: endpoints by node, a pod deleted, a
    rolling restart."""

    def replicas(self) -> int:
        return self.apps.read_namespaced_deployment(self.deployment, self.namespace).spec.replicas

    def sample(self, at_s: float) -> ClusterSample:
        serving = [p for p in self._listed_pods() if is_serving(p)]
        endpoints = self.core.read_namespaced_endpoints(self.service, self.namespace)
        endpoint_nodes: Counter[str] = Counter()
        for subset in endpoints.subsets or []:
            for address in subset.addresses or []:
                endpoint_nodes[address.node_name or "?"] += 1
        return ClusterSample(at_s, len(serving), dict(Counter(p.spec.node_name for p in serving)), dict(endpoint_nodes))

    def pods_on(self, node: str) -> int:
        return sum(1 for p in self._listed_pods() if p.spec.node_name == node)

    def delete_pod(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, self.namespace)

    def restart(self) -> None:
        """What ``kubectl rollout restart`` does: a new template annotation, so every pod is replaced."""
        stamp = datetime.now(UTC).isoformat()
        patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
        self.apps.patch_namespaced_deployment(self.deployment, self.namespace, patch)

    def rolled_out(self) -> bool:
        """As ``kubectl rollout status`` judges it: the new template observed, every pod updated and available."""
        deployment = self.apps.read_namespaced_deployment(self.deployment, self.namespace)
        status, wanted = deployment.status, deployment.spec.replicas
        return (status.observed_generation or 0) >= deployment.metadata.generation and all(
            (count or 0) == wanted for count in (status.updated_replicas, status.available_replicas, status.replicas))


def sample_until(cluster: Cluster, timeline: Timeline, stop: threading.Event, clock: Callable[[], float],
                 interval_s: float) -> None:
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    while not stop.is_set():
        with contextlib.suppress(ApiException, HTTPError):  # a sample missed; the next one comes
            timeline.samples.append(cluster.sample(clock()))
        stop.wait(interval_s)


def first_time(samples: list[ClusterSample], after_s: float,
               condition: Callable[[ClusterSample], bool]) -> float | None:
    """Seconds after ``after_s`` until the first sample that meets ``condition``."""
    return next((s.at_s - after_s for s in samples if s.at_s >= after_s and condition(s)), None)


def fault_result(fault: str, detail: dict[str, Any], outcomes: list[RequestOutcome], timeline: Timeline,
                 fault_at_s: float, replicas: int, settings: FaultSettings) -> dict[str, Any]:
    failed = [o for o in outcomes if o.error]
    samples = timeline.samples
    lost_node = detail.get("node")
    result: dict[str, Any] = {
        "fault": fault, **detail, "replicas": replicas, "settings": asdict(settings),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "requests": len(outcomes), "failed_requests": len(failed),
        "failures_by_kind": dict(Counter(o.error for o in failed)),
        "failures": [{"started_s": round(o.started_s - fault_at_s, 3), "ended_s": round(o.ended_s - fault_at_s, 3),
                      "error": o.error, "detail": o.detail} for o in failed],
        "first_failure_s": min((o.started_s - fault_at_s for o in failed), default=None),
        "last_failure_s": max((o.ended_s - fault_at_s for o in failed), default=None),
        "requests_per_s_before": rate(outcomes, 0.0, fault_at_s),
        # From the fault until all pods serve again after the first sample with fewer.
        "capacity_back_s": capacity_back(samples, fault_at_s, replicas),
        "samples": [asdict(s) for s in samples],
        "outcomes": [[round(o.started_s - fault_at_s, 3), round(o.ended_s - fault_at_s, 3), o.error]
                     for o in outcomes],
    }
    if lost_node:
        result["endpoints_off_lost_node_s"] = first_time(samples, fault_at_s,
                                                         lambda s: s.endpoint_nodes.get(lost_node, 0) == 0)
        result["rescheduled_s"] = first_time(samples, fault_at_s, lambda s: s.ready_pods == replicas and
                                             s.pods_by_node.get(lost_node, 0) == 0)
        result["capacity_back_s"] = result["rescheduled_s"]
    return result


def capacity_back(samples: list[ClusterSample], fault_at_s: float, replicas: int) -> float | None:
    dip = next((s.at_s for s in samples if s.at_s >= fault_at_s and s.ready_pods < replicas), None)
    back = None if dip is None else first_time(samples, dip, lambda s: s.ready_pods == replicas)
    return None if dip is None or back is None else round(dip + back - fault_at_s, 1)


def rate(outcomes: list[RequestOutcome], from_s: float, to_s: float) -> float:
    answered = sum(1 for o in outcomes if o.error is None and from_s <= o.ended_s < to_s)
    return round(answered / (to_s - from_s), 2) if to_s > from_s else 0.0


def inject(fault: str, cluster: Cluster, node: str | None, stop_node_command: str | None) -> dict[str, Any]:
    """Injects the fault; returns what was hit."""
    if fault == "pod-delete":
        victim = cluster.pods()[0]
        cluster.delete_pod(victim)
        return {"pod": victim}
    if fault == "rollout-restart":
        cluster.restart()
        return {}
    if not node or not stop_node_command:
        raise TargetError("node-loss needs the node and the command that stops it")
    command = [*shlex.split(stop_node_command), node]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TargetError(f"{shlex.join(command)} failed: {done.stderr.strip()}")
    return {"node": node, "pods_on_node": cluster.pods_on(node)}


def recovered(fault: str, cluster: Cluster, timeline: Timeline, fault_at_s: float, node: str | None) -> bool | None:
    """Whether the Deployment is whole again: rolled out, or all pods serving after a dip (and none on a lost node)."""
    if fault == "rollout-restart":
        return True if cluster.rolled_out() else None
    late = [s for s in timeline.samples if s.at_s > fault_at_s]
    if not late or late[-1].ready_pods != cluster.replicas():
        return None
    if fault == "node-loss":
        return True if late[-1].pods_by_node.get(node or "", 0) == 0 else None
    return True if any(s.ready_pods < late[-1].ready_pods for s in late) else None


def run_fault(fault: str, url: str, images: Path, cluster: Cluster, settings: FaultSettings, out: Path,
              echo: Callable[[str], None], node: str | None = None, stop_node_command: str | None = None,
              ) -> dict[str, Any]:
    """Steady load, the fault, load until the Deployment is whole again (and ``after_s`` more); writes ``out``."""
    origin = time.monotonic()

    def clock() -> float:
        return time.monotonic() - origin

    replicas = cluster.replicas()
    timeline = Timeline()
    stop_sampling = threading.Event()
    sampler = threading.Thread(target=sample_until, args=(cluster, timeline, stop_sampling, clock,
                                                          settings.poll_interval_s), daemon=True)
    sampler.start()
    with LoadLoop(url, images, settings.users, settings.request_timeout_s, clock) as load:
        echo(f"{settings.users} users on {url}; {fault} in {settings.before_s:g} s")
        time.sleep(settings.before_s)
        fault_at_s = clock()
        detail = inject(fault, cluster, node, stop_node_command)
        echo(f"{fault} at {fault_at_s:.1f} s: {detail or 'done'}; waiting for the Deployment to be whole again")
        try:
            poll(lambda: recovered(fault, cluster, timeline, fault_at_s, node), settings.recovery_timeout_s,
                 settings.poll_interval_s, f"{cluster.deployment} whole again after {fault}")
        finally:
            time.sleep(settings.after_s)
    stop_sampling.set()
    sampler.join()
    result = fault_result(fault, detail, load.outcomes, timeline, fault_at_s, replicas, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    echo(f"{fault}: {result['failed_requests']} of {result['requests']} requests failed "
         f"{result['failures_by_kind']}; capacity back after {result['capacity_back_s']} s; written to {out}")
    return result


@click.command("faults")
@click.argument("fault", type=click.Choice(FAULTS))
@click.option("--service-url", required=True, help="Where the load goes, e.g. the NodePort on the controller.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON result file.")
@click_options(FaultSettings)
@click.option("--node", help="node-loss: the node to lose.")
@click.option("--stop-node-command", help="node-loss: a command that stops the node named after it, "
                                          "e.g. 'scripts/test-cluster stop-node'.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images to send [default: $CLOUDDETECT_IMAGES or ../shared/datasets/inputfolder].")
@click_options(KubernetesSettings, ["namespace", "deployment", "service", "kubeconfig"])
def faults(fault: str, **options: Any) -> None:
    """Inject FAULT (pod-delete, rollout-restart, node-loss) under steady load; record what users saw as JSON."""
    settings = FaultSettings(**{f.name: options[f.name] for f in fields(FaultSettings)})
    chosen = {name: options[name] for name in ("namespace", "deployment", "service", "kubeconfig")}
    target = KubernetesSettings(**chosen, ready_timeout_s=settings.recovery_timeout_s)
    try:
        cluster = Cluster(target, settings.poll_interval_s)
        run_fault(fault, options["service_url"], options["images"] or default_folder(), cluster, settings,
                  options["out"], click.echo, options["node"], options["stop_node_command"])
    except TargetError as exc:
        raise click.ClickException(str(exc)) from None
