"""The product on a real three-node Kubernetes (``scripts/test-cluster``: a controller and two workers), with the
image built here and loaded into every node's engine, as the cloud recipe does.

The image and the manifests deploy as they are; pods run on both workers, never on the tainted controller; the
NodePort answers on every node's address and reaches pods on the other nodes; the pods run under the CPU quota and
memory limit every pod is given; scaling 1 -> 2 -> 4 -> 8 leaves every pod serving (each pod takes 0.5 CPU and each
worker reports 2); the capacity lab scales the real Deployment; and faults under load (a pod deleted, a rolling
restart, a worker lost) are measured with ``clouddetect lab faults``, whose JSON lands in
``CLOUDDETECT_FAULT_RESULTS_DIR`` when set.

A cluster that is already up (``scripts/test-cluster up``) is used and left running; otherwise the tests start one
and stop it at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import requests
import yaml
from slow_attack import assert_honest_answered_and_slow_cut_off, attack, body_deadline_s

from clouddetect.config import Settings
from clouddetect.lab.capacity.results import Experiment
from clouddetect.verdicts import ENDPOINT, response_problem
from support import apt_install, request_body, stand_in_commands

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
TEST_CLUSTER = ROOT / "scripts" / "test-cluster"
TOUR = ROOT / "deploy" / "cluster" / "tour"
LOAD_IMAGE = ROOT / "deploy" / "cluster" / "load-image"
BASE = ROOT / "deploy" / "k8s" / "base"
IMAGE = "clouddetect:latest"
POD_COUNTS = [int(n) for n in os.environ.get("CLOUDDETECT_CLUSTER_POD_COUNTS", "1,2,4,8").split(",")]
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/master"
SPREAD_PODS = 4
REQUESTS_PER_NODE = 24
BALANCE_PODS = 8
# The unit of capacity: one pod of 0.5 CPU and 512 MiB.
POD_CPU_CORES = 0.5
POD_MEMORY_BYTES = 512 * 1024**2
REQUESTS_PER_POD = 10
MEMORY_USAGE = "memory/memory.usage_in_bytes"
MEMORY_PEAK = "memory/memory.max_usage_in_bytes"
CLUSTER_UP_TIMEOUT_S = 3600.0  # a cold start builds Kubernetes
IMAGE_BUILD_TIMEOUT_S = 1800.0
# The recipe's image loading reaches the workers with `ssh USER@NODE COMMAND`: here that runs on the test node.
SSH_STAND_IN = f"""#!/usr/bin/env bash
set -euo pipefail
host=$1
shift
exec {TEST_CLUSTER} ssh "${{host#*@}}" "$@"
"""
SUDO_STAND_IN = '#!/bin/sh\nexec "$@"\n'  # the tests run as root
CONTAINERD_NAMESPACE = "k8s.io"  # the kubelet's images in containerd
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
TOUR_STEPS = 10
TOUR_PODS = 4
TOUR_TIMEOUT_S = 600.0
# Faults under load: a few users held before and after each fault; the lost worker is brought back afterwards.
FAULT_PODS = 4
FAULT_USERS = 6
FAULT_BEFORE_S = 10.0
FAULT_AFTER_S = 5.0
FAULT_TIMEOUT_S = 600.0
LOST_WORKER = "worker-2"
FAULT_RESULTS_DIR = os.environ.get("CLOUDDETECT_FAULT_RESULTS_DIR")
# Where the master + remote report of the lab test is kept when set (its PDF is the one shown in docs/).
REPORT_DIR = os.environ.get("CLOUDDETECT_CLUSTER_REPORT_DIR")
REMOTE_LINK_NAME = "cdtest-remote"
REPORT_PACKAGES = ["chromium", "fonts-liberation"]
# Slow clients through the NodePort, spread by kube-proxy over a few pods, cut at the manifests' own deadlines.
SLOW_PODS = 2
SLOW_CLIENTS_PER_KIND = 500

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

    def nodes(self) -> dict[str, dict]:
        return {n["metadata"]["name"]: n for n in yaml.safe_load(self.kubectl("get", "nodes", "-o", "yaml"))["items"]}

    def addresses(self) -> dict[str, str]:
        """Each node's InternalIP."""
        return {name: next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
                for name, node in self.nodes().items()}

    def workers(self) -> list[str]:
        return sorted(name for name, node in self.nodes().items()
                      if not any(t["key"] == CONTROL_PLANE_TAINT for t in node["spec"].get("taints") or []))

    def controller(self) -> str:
        workers = self.workers()
        return next(name for name in self.nodes() if name not in workers)


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
        return sorted(self.pod_nodes())

    def pod_nodes(self) -> dict[str, str]:
        """Each serving pod's node."""
        items = yaml.safe_load(self.kubectl("get", "pods", "--selector", self.selector, "--output", "yaml"))["items"]
        return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in items if "deletionTimestamp" not in p["metadata"]}

    def node_port_urls(self) -> dict[str, str]:
        """The Service's NodePort on each node's address."""
        port = self.url.rsplit(":", 1)[1]
        return {node: f"http://{address}:{port}" for node, address in self.cluster.addresses().items()}

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
def app_image(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The product's image, built as ``make image`` builds it (on the stand-in base image where none is pulled), and
    loaded into every node's engine."""
    logs = tmp_path_factory.mktemp("image")
    run_logged(["make", "-C", str(ROOT), "image", f"IMAGE={IMAGE}"], logs / "build.log", IMAGE_BUILD_TIMEOUT_S)
    run_logged([str(TEST_CLUSTER), "load-image", IMAGE], logs / "load.log", IMAGE_BUILD_TIMEOUT_S)
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
    controller = cluster.controller()
    url = f"http://{cluster.addresses()[controller]}:{service['spec']['ports'][0]['nodePort']}"
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


def on_node(node: str, command: str, timeout_s: float = KUBECTL_TIMEOUT_S) -> str:
    """``command`` run on a test node as ``ssh NODE COMMAND`` runs it on a VM; returns its output."""
    done = subprocess.run([str(TEST_CLUSTER), "ssh", node, command], capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    assert done.returncode == 0, f"{node}: {command}: {done.stderr}"
    return done.stdout


def containerd_image_id(node: str, image: str) -> str | None:
    """Docker's image ID (the config digest) of ``image`` in the node's containerd, or None when it is not there."""
    name = f"docker.io/library/{image}"
    for line in on_node(node, f"ctr --namespace {CONTAINERD_NAMESPACE} images ls").splitlines()[1:]:
        ref, _media_type, digest, *_ = line.split()
        if ref == name:
            manifest = on_node(node, f"ctr --namespace {CONTAINERD_NAMESPACE} content get {digest}")
            return json.loads(manifest)["config"]["digest"]
    return None


def test_the_recipe_loads_the_image_into_every_nodes_containerd(cluster: Cluster, app_image: str,
                                                                tmp_path: Path) -> None:
    """deploy/cluster/load-image for real, run on the controller as on the VMs: ``docker save`` from its Docker
    engine, ``ctr import`` into each node's containerd, which the kubelet uses from 1.24 on (this cluster's 1.20
    kubelets still take images from Docker, so the pods do not show it)."""
    workers, controller = cluster.workers(), cluster.controller()
    stand_ins = stand_in_commands(tmp_path, {"ssh": SSH_STAND_IN, "sudo": SUDO_STAND_IN})
    nodes = [controller, *workers]
    for node in nodes:
        on_node(node, f"ctr --namespace {CONTAINERD_NAMESPACE} images rm docker.io/library/{app_image} || true")
        assert containerd_image_id(node, app_image) is None
    targets = " ".join(["local", *(f"root@{worker}" for worker in workers)])
    on_node(controller, f"PATH={shlex.quote(str(stand_ins))}:$PATH {shlex.quote(str(LOAD_IMAGE))} --image "
                        f"{shlex.quote(app_image)} {targets}", IMAGE_BUILD_TIMEOUT_S)
    built = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", app_image], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert {node: containerd_image_id(node, app_image) for node in nodes} == dict.fromkeys(nodes, built)


def test_pods_run_the_image_built_here(deployed: Deployed, app_image: str) -> None:
    built = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", app_image], capture_output=True,
                           text=True, check=True).stdout.strip()
    pod = yaml.safe_load(deployed.kubectl("get", "pod", deployed.pods()[0], "--output", "yaml"))
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(built)


def test_three_nodes_are_ready_and_only_the_controller_carries_the_control_plane_taint(cluster: Cluster) -> None:
    nodes = cluster.nodes()
    assert len(nodes) == 3
    for name, node in nodes.items():
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", f"{name}: {ready}"
    assert len(cluster.workers()) == 2
    addresses = cluster.addresses()
    assert len(set(addresses.values())) == 3
    assert not any(address.startswith("127.") for address in addresses.values())


def test_pods_spread_over_both_workers(deployed: Deployed) -> None:
    deployed.scale(SPREAD_PODS)
    print(f"{SPREAD_PODS} pods on {sorted(deployed.pod_nodes().values())}")
    assert set(deployed.pod_nodes().values()) == set(deployed.cluster.workers())


def test_node_port_on_every_nodes_address_reaches_pods_on_other_nodes(deployed: Deployed, images: list[Path]) -> None:
    pods = deployed.scale(SPREAD_PODS)
    where = deployed.pod_nodes()
    for node, url in deployed.node_port_urls().items():
        sent = [detect(url, images[i % len(images)]) for i in range(REQUESTS_PER_NODE)]
        by_pod = {pod: served_ids(deployed, pod) & set(sent) for pod in pods}
        assert sorted(i for ids in by_pod.values() for i in ids) == sorted(sent)
        elsewhere = {pod: len(ids) for pod, ids in by_pod.items() if ids and where[pod] != node}
        print(f"{url} ({node}): answered on other nodes by {elsewhere}")
        assert elsewhere, f"every request to {node}'s NodePort was answered on {node}"


def test_pods_run_under_a_pods_cpu_quota_and_memory_limit(deployed: Deployed) -> None:
    pod = deployed.pods()[0]
    quota_us = deployed.cgroup_value(pod, "cpu/cpu.cfs_quota_us")
    period_us = deployed.cgroup_value(pod, "cpu/cpu.cfs_period_us")
    assert quota_us / period_us == POD_CPU_CORES
    assert deployed.cgroup_value(pod, "memory/memory.limit_in_bytes") == POD_MEMORY_BYTES


def test_slow_clients_through_the_node_port_are_cut_off_while_honest_requests_are_answered(
    deployed: Deployed, images: list[Path]
) -> None:
    """kube-proxy hands each slow connection to a pod like any other; the pods cut them at the deadlines the manifests
    leave at their defaults (headers 10 s, an image-sized body ~22 s: the whole attack stays under a minute), keep
    answering honest requests and stay within their memory limit, without a restart."""
    pods = deployed.scale(SLOW_PODS)
    payload = request_body(images[1], "honest")
    expected = requests.post(deployed.url + ENDPOINT, json=payload, timeout=HTTP_TIMEOUT_S).json()
    defaults = Settings()
    result = attack(deployed.url, SLOW_CLIENTS_PER_KIND, payload,
                    lambda: max(deployed.cgroup_value(pod, MEMORY_USAGE) for pod in pods) / 1024**2,
                    body_deadline_s(defaults))
    peaks_mib = [deployed.cgroup_value(pod, MEMORY_PEAK) / 1024**2 for pod in pods]
    print(f"NodePort, {SLOW_PODS} pods: {result.summary()} (cgroup peaks since start "
          f"{', '.join(f'{peak:.0f}' for peak in peaks_mib)} MiB)")
    assert deployed.pods() == pods
    restarts = deployed.kubectl("get", "pods", "--selector", deployed.selector, "--output",
                                "jsonpath={.items[*].status.containerStatuses[*].restartCount}").split()
    assert set(restarts) == {"0"}, restarts
    assert_honest_answered_and_slow_cut_off(result, expected, defaults.header_timeout_s, body_deadline_s(defaults))
    logs = [deployed.kubectl("logs", pod) for pod in pods]
    assert sum(log.count("too slow: headers not complete") for log in logs) == SLOW_CLIENTS_PER_KIND
    assert sum(log.count("body bytes in") for log in logs) == SLOW_CLIENTS_PER_KIND
    assert max(peaks_mib) < POD_MEMORY_BYTES / 1024**2


def test_scaling_leaves_every_pod_serving_and_the_per_pod_counts_balanced(deployed: Deployed,
                                                                          images: list[Path]) -> None:
    for count in POD_COUNTS:
        pods = deployed.scale(count)
        assert len(pods) == count
        sent = [detect(deployed.url, images[i % len(images)]) for i in range(REQUESTS_PER_POD * count)]
        by_pod = {pod: served_ids(deployed, pod) & set(sent) for pod in pods}
        counts = {pod: len(ids) for pod, ids in by_pod.items()}
        where = deployed.pod_nodes()
        print(f"{count} pods: requests served per pod (node) {[(n, where[p]) for p, n in counts.items()]}")
        assert all(counts.values()), f"some pod served none of {len(sent)} requests: {counts}"
        assert sorted(i for ids in by_pod.values() for i in ids) == sorted(sent)
        # kube-proxy picks a pod per connection at random: no pod gets more than three times its share.
        assert max(counts.values()) <= 3 * len(sent) / count, counts
        if count == BALANCE_PODS:
            assert sorted(Counter(where.values()).values()) == [count // 2, count // 2], where


def test_the_demo_tour_walks_through_every_step_on_the_cluster(deployed: Deployed, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(deployed.cluster.kubeconfig), "PYTHON": sys.executable, "IMAGE": IMAGE}
    done = subprocess.run([str(TOUR)], capture_output=True, text=True, env=env, timeout=TOUR_TIMEOUT_S, check=False)
    (tmp_path / "tour.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    headings = [line for line in done.stdout.splitlines() if re.match(r"== \d+\. ", line)]
    print("\n".join(headings))
    assert len(headings) == TOUR_STEPS
    assert '"id":"tour-1"' in done.stdout
    assert len(deployed.pods()) == TOUR_PODS
    for worker in deployed.cluster.workers():
        assert worker in done.stdout


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
    remote = run_remote_set(deployed, tmp_path)
    report_dir = Path(REPORT_DIR) if REPORT_DIR else tmp_path / "report"
    if not all(shutil.which(tool) for tool in ("chromium", "fc-list")):
        apt_install(REPORT_PACKAGES)
    run_logged([*clouddetect, "report", str(out), str(remote), "--out", str(report_dir), "--title",
                "CloudDetect on the three-node test cluster"], tmp_path / "lab-report.log", LAB_TIMEOUT_S)
    report_rows = (report_dir / "report.md").read_text().splitlines()
    for pods in LAB_PODS:
        row = next((r for r in report_rows if r.startswith(f"| {pods} | ")), None)
        assert row is not None, f"no capacity row for {pods} pods"
        assert "-" not in row.replace("|", " ").split(), f"master or remote missing for {pods} pods: {row}"
    assert (report_dir / "report.pdf").read_bytes().startswith(b"%PDF")


def run_remote_set(deployed: Deployed, tmp_path: Path) -> Path:
    """The same small set from a simulated remote machine: its own namespace, a WAN-like link to the nodes."""
    out = tmp_path / "lab-remote"
    run_logged([sys.executable, "-m", "clouddetect", "lab", "link", "run", "--name", REMOTE_LINK_NAME, "--",
                sys.executable, "-m", "clouddetect", "lab", "run", "--client-location", "remote", "--out", str(out),
                "--pods", ",".join(map(str, LAB_PODS)), "--repeats", "1", "--max-users", str(LAB_MAX_USERS),
                "--hold-s", str(LAB_HOLD_S), "--max-extension-s", str(LAB_HOLD_S), "--slo-hold-s", str(LAB_HOLD_S),
                "--progress-interval-s", "1", "--kubeconfig", str(deployed.cluster.kubeconfig),
                "--namespace", deployed.namespace, "--deployment", deployed.deployment,
                "--service-url", deployed.url],
               tmp_path / "lab-remote.log", LAB_TIMEOUT_S)
    experiment = Experiment.load(out)
    assert experiment.conditions["client_link"]["simulated"]
    assert sorted(run.pods for run in experiment.runs) == LAB_PODS
    for run in experiment.runs:
        assert run.client_location == "remote" and run.requests_sent == run.requests_judged > 0
    return out


def run_fault(deployed: Deployed, fault: str, out: Path, *extra: str) -> dict:
    deployed.scale(FAULT_PODS)
    results = Path(FAULT_RESULTS_DIR) if FAULT_RESULTS_DIR else out
    result_file = results / f"fault-{fault}.json"
    run_logged([sys.executable, "-m", "clouddetect", "lab", "faults", fault, "--service-url", deployed.url,
                "--out", str(result_file), "--users", str(FAULT_USERS), "--before-s", str(FAULT_BEFORE_S),
                "--after-s", str(FAULT_AFTER_S), "--kubeconfig", str(deployed.cluster.kubeconfig),
                "--namespace", deployed.namespace, "--deployment", deployed.deployment, *extra],
               out / f"fault-{fault}.log", FAULT_TIMEOUT_S)
    result = json.loads(result_file.read_text())
    summary = {k: v for k, v in result.items() if k not in ("samples", "outcomes", "settings")}
    print(f"{fault}: {summary}")
    assert result["requests"] > 0 and result["requests_per_s_before"] > 0
    return result


def test_a_pod_deleted_under_load_fails_no_request(deployed: Deployed, tmp_path: Path) -> None:
    result = run_fault(deployed, "pod-delete", tmp_path)
    assert result["capacity_back_s"] is not None
    assert result["failed_requests"] == 0, result["failures"]


def test_a_rolling_restart_under_load_fails_no_request(deployed: Deployed, tmp_path: Path) -> None:
    result = run_fault(deployed, "rollout-restart", tmp_path)
    assert result["failed_requests"] == 0, result["failures"]


def test_a_lost_worker_is_taken_out_of_the_service_and_its_pods_rescheduled(deployed: Deployed,
                                                                             tmp_path: Path) -> None:
    try:
        result = run_fault(deployed, "node-loss", tmp_path, "--node", LOST_WORKER,
                           "--stop-node-command", f"{TEST_CLUSTER} stop-node")
    finally:
        run_logged([str(TEST_CLUSTER), "start-node", LOST_WORKER], tmp_path / "start-node.log", CLUSTER_UP_TIMEOUT_S)
    assert result["pods_on_node"] > 0
    assert result["endpoints_off_lost_node_s"] is not None
    assert result["rescheduled_s"] is not None
    assert LOST_WORKER not in deployed.pod_nodes().values()
