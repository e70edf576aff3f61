"""The product on a real single-node Kubernetes (``scripts/test-cluster``), with the image built here.

The image and the manifests deploy as they are; the NodePort Service answers on 127.0.0.1 and spreads requests over
the pods; the pods run under the CPU quota and memory limit every pod is given; the capacity lab scales the real
Deployment.

Each pod takes 0.5 CPU. This node has 2 cores, so the scaling test goes 1 -> 2 -> 1 pods; on a node with enough
cores the same test walks any sequence, e.g. ``CLOUDDETECT_CLUSTER_POD_COUNTS=1,2,4,8,1 pytest -m cluster``.
A cluster that is already up (``scripts/test-cluster up``) is used and left running; otherwise the tests start one
and stop it at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import requests
import yaml

from clouddetect.answers import ENDPOINT, response_problem
from clouddetect.lab.results import Experiment
from support import request_body

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
TEST_CLUSTER = ROOT / "scripts" / "test-cluster"
BASE = ROOT / "deploy" / "k8s" / "base"
IMAGE = "clouddetect:latest"
POD_COUNTS = [int(n) for n in os.environ.get("CLOUDDETECT_CLUSTER_POD_COUNTS", "1,2,1").split(",")]
# The unit of capacity: one pod of 0.5 CPU and 512 MiB.
POD_CPU_CORES = 0.5
POD_MEMORY_BYTES = 512 * 1024**2
REQUESTS_PER_POD = 10
CLUSTER_UP_TIMEOUT_S = 3600.0  # a cold start builds Kubernetes
IMAGE_BUILD_TIMEOUT_S = 1800.0
KUBECTL_TIMEOUT_S = 120.0
ROLLOUT_TIMEOUT_S = 300.0
NODE_PORT_TIMEOUT_S = 60.0
READY_PROBE_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.5
HTTP_TIMEOUT_S = 30.0
# A capacity experiment small enough for a test: two pod counts, one run each, a handful of users held briefly.
LAB_PODS = [1, 2]
LAB_MAX_USERS = 3
LAB_HOLD_S = 5.0
LAB_TIMEOUT_S = 900.0

T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout_s: float, waiting_for: str) -> T:
    deadline = time.monotonic() + timeout_s
    while (answer := check()) is None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{waiting_for} did not happen within {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)
    return answer


def run_logged(command: list[str], log_path: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Runs ``command`` with its output in ``log_path``; a failure shows the output's last lines."""
    with log_path.open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        raise AssertionError(f"{' '.join(command)} exited with {done.returncode}:\n{tail}")
    return done


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path

    def kubectl(self, *args: str, timeout_s: float = KUBECTL_TIMEOUT_S) -> str:
        done = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                              text=True, timeout=timeout_s, check=False)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout


@dataclass(frozen=True)
class Deployed:
    cluster: Cluster
    namespace: str
    deployment: str
    selector: str
    url: str

    def kubectl(self, *args: str, timeout_s: float = KUBECTL_TIMEOUT_S) -> str:
        return self.cluster.kubectl("--namespace", self.namespace, *args, timeout_s=timeout_s)

    def wait_rolled_out(self) -> None:
        self.kubectl("rollout", "status", f"deployment/{self.deployment}", f"--timeout={ROLLOUT_TIMEOUT_S:g}s",
                     timeout_s=ROLLOUT_TIMEOUT_S + KUBECTL_TIMEOUT_S)

    def pods(self) -> list[str]:
        """The serving pods: listed, and none terminating."""
        items = yaml.safe_load(self.kubectl("get", "pods", "--selector", self.selector, "--output", "yaml"))["items"]
        return sorted(p["metadata"]["name"] for p in items if "deletionTimestamp" not in p["metadata"])

    def scale(self, pods: int) -> list[str]:
        """Scales to ``pods`` and waits until exactly that many are ready and the old ones are gone."""
        self.kubectl("scale", f"deployment/{self.deployment}", f"--replicas={pods}")
        self.wait_rolled_out()
        poll(lambda: True if len(self._listed()) == pods else None, ROLLOUT_TIMEOUT_S, f"exactly {pods} pods")
        return self.pods()

    def _listed(self) -> list[str]:
        return self.kubectl("get", "pods", "--selector", self.selector, "--output", "name").split()

    def cgroup_value(self, pod: str, path: str) -> int:
        """A cgroup (v1, as the test cluster runs) setting as the pod's container sees it."""
        return int(self.kubectl("exec", pod, "--", "cat", f"/sys/fs/cgroup/{path}"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("test-cluster")
    already_up = subprocess.run([TEST_CLUSTER, "status"], capture_output=True, check=False).returncode == 0
    try:
        run_logged([str(TEST_CLUSTER), "up"], logs / "up.log", CLUSTER_UP_TIMEOUT_S)
        kubeconfig = subprocess.run([TEST_CLUSTER, "kubeconfig"], capture_output=True, text=True, check=True).stdout
        yield Cluster(Path(kubeconfig.strip()))
    finally:
        if not already_up:
            run_logged([str(TEST_CLUSTER), "down"], logs / "down.log", CLUSTER_UP_TIMEOUT_S)


@pytest.fixture(scope="session")
def app_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The product's image, built as ``make image`` builds it (on the stand-in base image where none is pulled)."""
    log = tmp_path_factory.mktemp("image") / "build.log"
    run_logged(["make", "-C", str(ROOT), "image", f"IMAGE={IMAGE}"], log, IMAGE_BUILD_TIMEOUT_S)
    return IMAGE


def rendered(kustomization: Path) -> list[dict]:
    return list(yaml.safe_load_all(subprocess.run(["kubectl", "kustomize", str(kustomization)], capture_output=True,
                                                  text=True, check=True).stdout))


def answers(url: str) -> bool | None:
    """Whether ``url`` reports ready; until kube-proxy has synced the NodePort a connection may fail or stall."""
    try:
        return True if requests.get(url + "/readyz", timeout=READY_PROBE_TIMEOUT_S).status_code == 200 else None
    except requests.RequestException:
        return None


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, app_image: str) -> Iterator[Deployed]:
    """``kubectl apply -k`` of the base, as it is; removed again at the end."""
    manifests = rendered(BASE)
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    service = next(m for m in manifests if m["kind"] == "Service" and m["spec"]["type"] == "NodePort")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == app_image
    namespace = deployment["metadata"].get("namespace", "default")
    selector = ",".join(f"{k}={v}" for k, v in sorted(deployment["spec"]["selector"]["matchLabels"].items()))
    url = f"http://127.0.0.1:{service['spec']['ports'][0]['nodePort']}"
    cluster.kubectl("apply", "-k", str(BASE))
    target = Deployed(cluster, namespace, deployment["metadata"]["name"], selector, url)
    try:
        target.wait_rolled_out()
        poll(lambda: answers(url), NODE_PORT_TIMEOUT_S, f"{url} answering")
        yield target
    finally:
        cluster.kubectl("delete", "-k", str(BASE), "--wait", f"--timeout={ROLLOUT_TIMEOUT_S:g}s",
                        timeout_s=ROLLOUT_TIMEOUT_S + KUBECTL_TIMEOUT_S)


def detect(url: str, image: Path) -> str:
    """One request on a connection of its own (kube-proxy balances connections); returns the request's id."""
    body = request_body(image)
    response = requests.post(url + ENDPOINT, json=body, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    assert response_problem(response.json(), body["id"]) is None
    return body["id"]


def served_ids(target: Deployed, pod: str) -> set[str]:
    """Request ids in the pod's log lines that name this pod as the instance that answered."""
    lines = target.kubectl("logs", pod).splitlines()
    return {line.split(" id=", 1)[1].split()[0] for line in lines if f" instance={pod} " in line and " id=" in line}


def test_pods_run_the_image_built_here(deployed: Deployed, app_image: str) -> None:
    built = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", app_image], capture_output=True,
                           text=True, check=True).stdout.strip()
    pod = yaml.safe_load(deployed.kubectl("get", "pod", deployed.pods()[0], "--output", "yaml"))
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(built)


def test_service_answers_through_the_node_port_on_loopback(deployed: Deployed, images: list[Path]) -> None:
    for image in images[:8]:
        detect(deployed.url, image)


def test_pods_run_under_a_pods_cpu_quota_and_memory_limit(deployed: Deployed) -> None:
    pod = deployed.pods()[0]
    quota_us = deployed.cgroup_value(pod, "cpu/cpu.cfs_quota_us")
    period_us = deployed.cgroup_value(pod, "cpu/cpu.cfs_period_us")
    assert quota_us / period_us == POD_CPU_CORES
    assert deployed.cgroup_value(pod, "memory/memory.limit_in_bytes") == POD_MEMORY_BYTES


def test_scaling_spreads_requests_over_every_pod(deployed: Deployed, images: list[Path]) -> None:
    for count in POD_COUNTS:
        pods = deployed.scale(count)
        assert len(pods) == count
        sent = [detect(deployed.url, images[i % len(images)]) for i in range(REQUESTS_PER_POD * count)]
        by_pod = {pod: served_ids(deployed, pod) & set(sent) for pod in pods}
        print(f"{count} pods: requests served per pod {[len(ids) for ids in by_pod.values()]}")
        assert all(by_pod.values()), f"some pod served none of {len(sent)} requests: {by_pod}"
        assert sorted(i for ids in by_pod.values() for i in ids) == sorted(sent)


def test_lab_scales_the_deployment_and_reports_each_pod_count(deployed: Deployed, tmp_path: Path) -> None:
    out = tmp_path / "lab"
    clouddetect = [sys.executable, "-m", "clouddetect", "lab"]
    run_logged([*clouddetect, "run", "--out", str(out), "--pods", ",".join(map(str, LAB_PODS)), "--repeats", "1",
                "--max-users", str(LAB_MAX_USERS), "--hold-s", str(LAB_HOLD_S), "--max-extension-s", str(LAB_HOLD_S),
                "--slo-hold-s", str(LAB_HOLD_S), "--progress-interval-s", "1",
                "--kubeconfig", str(deployed.cluster.kubeconfig), "--namespace", deployed.namespace,
                "--deployment", deployed.deployment, "--service-url", deployed.url],
               tmp_path / "lab-run.log", LAB_TIMEOUT_S)
    experiment = Experiment.load(out)
    runs = {run.pods: run for run in experiment.runs}
    assert sorted(runs) == LAB_PODS
    for pods, run in runs.items():
        assert len(run.pod_names) == pods
        assert run.endpoint == deployed.url
        assert run.max_users >= 1 and run.failures == 0
        assert run.requests_sent == run.requests_judged > 0
    # The pods' resources are read from the Deployment the lab scaled.
    assert experiment.environment["service"]["pod_cpu"] == "500m"
    assert experiment.environment["service"]["pod_memory"] == "512Mi"
    replicas = deployed.kubectl("get", f"deployment/{deployed.deployment}", "--output", "jsonpath={.spec.replicas}")
    assert int(replicas) == LAB_PODS[-1]
    run_logged([*clouddetect, "report", str(out)], tmp_path / "lab-report.log", LAB_TIMEOUT_S)
    report_rows = (out / "report" / "report.md").read_text().splitlines()
    for pods in LAB_PODS:
        assert any(row.startswith(f"| {pods} | ") for row in report_rows), f"no capacity row for {pods} pods"
