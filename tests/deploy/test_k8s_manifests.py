"""The kustomize base and overlays render, validate against the official schemas and keep the deployment's rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from clouddetect.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
OVERLAY_REPLICAS = {1, 2, 4, 8}
# The one overlay that changes more than replicas: each pod's CPU, for the whole table on the 2-core test cluster.
CPU_SCALED = K8S / "overlays" / "test-cluster-cpu-scaled"
CPU = "500m"
MEMORY = "512Mi"
NODE_PORT_RANGE = range(30000, 32768)
# kubectl 1.27 brought kustomize v5; Debian's 1.20 (kustomize v2) cannot render the overlays.
OLDEST_KUBECTL = (1, 27)
KUBECTL_INSTALL = ROOT / "scripts" / "kubectl-install"
CLUSTER_VERSION_PATTERN = re.compile(r"^KUBERNETES_VERSION=\$\{KUBERNETES_VERSION:-(\d+\.\d+)\.\d+\}", re.M)


def cluster_version() -> str:
    """The Kubernetes minor version the cluster recipe installs, e.g. ``1.34``."""
    found = CLUSTER_VERSION_PATTERN.search((ROOT / "deploy" / "cluster" / "lib.sh").read_text())
    assert found, "deploy/cluster/lib.sh pins no KUBERNETES_VERSION"
    return found.group(1)


def pinned_kubectl_version() -> str:
    """The kubectl version ``scripts/kubectl-install`` pins, e.g. ``1.37.1``."""
    found = re.search(r"^KUBECTL_VERSION=(\S+)", KUBECTL_INSTALL.read_text(), re.M)
    assert found, "scripts/kubectl-install pins no KUBECTL_VERSION"
    return found.group(1)


def kubectl_problem(version: dict[str, Any]) -> str | None:
    """Why a kubectl, as ``kubectl version --client -o json`` describes it, cannot render deploy/k8s, or None."""
    client = version.get("clientVersion", {})
    found = (int(client.get("major", 0)), int(re.sub(r"\D", "", client.get("minor", "0")) or 0))
    if found < OLDEST_KUBECTL:
        return (f"kubectl {client.get('gitVersion', '?')} is too old to render deploy/k8s: it needs kubectl >= "
                f"{OLDEST_KUBECTL[0]}.{OLDEST_KUBECTL[1]} (kustomize v5)")
    return None


@pytest.fixture(scope="module")
def kubectl() -> str:
    """The project's pinned kubectl in the venv (``make setup`` installs it), else the one on PATH if new enough."""
    pinned = pinned_kubectl_version()
    installed = Path(sys.executable).with_name("kubectl")
    found = str(installed) if installed.exists() else shutil.which("kubectl")
    assert found, f"no kubectl: run `make setup`, which installs kubectl {pinned} into .venv/bin"
    version = subprocess.run([found, "version", "--client", "--output", "json"], capture_output=True, text=True)
    problem = kubectl_problem(json.loads(version.stdout or "{}"))
    assert problem is None, f"{found}: {problem}; run `make setup`, which installs kubectl {pinned} into .venv/bin"
    return found


def render(kubectl: str, folder: Path) -> str:
    return subprocess.run([kubectl, "kustomize", str(folder)], check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Rendered:
    folder: Path
    path: Path
    docs: list[Any]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kubectl: str) -> Rendered:
    text = render(kubectl, request.param)
    path = tmp_path_factory.mktemp("rendered") / "manifests.yaml"
    path.write_text(text)
    return Rendered(request.param, path, [doc for doc in yaml.safe_load_all(text) if doc])


def by_kind(docs: list[Any], kind: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def container(docs: list[Any]) -> dict[str, Any]:
    containers = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize(
    ("version", "usable"),
    [
        ({"clientVersion": {"major": "1", "minor": "20", "gitVersion": "v1.20.2"}}, False),
        ({"clientVersion": {"major": "1", "minor": "26+", "gitVersion": "v1.26.1-eks"}}, False),
        ({"clientVersion": {"major": "1", "minor": "32", "gitVersion": "v1.32.4"}}, True),
        ({}, False),
    ],
)
def test_an_old_kubectl_is_refused_saying_why(version: dict[str, Any], usable: bool) -> None:
    problem = kubectl_problem(version)
    assert (problem is None) == usable
    if not usable:
        assert "too old to render deploy/k8s" in problem


def test_pinned_kubectl_is_within_one_minor_of_the_cluster_recipe() -> None:
    # kubectl's version skew policy: one minor version older or newer than the API server.
    kubectl_minor = int(pinned_kubectl_version().split(".")[1])
    cluster_minor = int(cluster_version().split(".")[1])
    assert abs(kubectl_minor - cluster_minor) <= 1, (
        f"scripts/kubectl-install pins kubectl {pinned_kubectl_version()}, deploy/cluster/lib.sh Kubernetes "
        f"{cluster_version()}: move them together")


def test_base_and_one_overlay_per_replica_count_exist() -> None:
    overlays = {p.name for p in KUSTOMIZATIONS if p.parent.name == "overlays"}
    assert K8S / "base" in KUSTOMIZATIONS
    assert overlays == {f"replicas-{n}" for n in OVERLAY_REPLICAS} | {CPU_SCALED.name}


@pytest.mark.parametrize("version", ["cluster", "latest"])
def test_manifests_pass_strict_schema_validation(rendered: Rendered, version: str) -> None:
    validator = Path(sys.executable).with_name("kubernetes-validate")
    command = [str(validator), "--strict", "--no-warn", str(rendered.path)]
    if version == "cluster":
        command[1:1] = ["--kubernetes-version", f"{cluster_version()}.0"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_requests_equal_limits_at_half_a_cpu_and_512mi(rendered: Rendered) -> None:
    """The CPU-scaled overlay aside, which is checked against the base below."""
    resources = container(rendered.docs)["resources"]
    cpu = resources["limits"]["cpu"] if rendered.folder == CPU_SCALED else CPU
    assert resources["requests"] == resources["limits"] == {"cpu": cpu, "memory": MEMORY}


def test_the_cpu_scaled_overlay_changes_only_each_pods_cpu(kubectl: str) -> None:
    """Requests = limits still (a Guaranteed pod), memory as assigned, less CPU; everything else is the base's."""
    base = [doc for doc in yaml.safe_load_all(render(kubectl, K8S / "base")) if doc]
    scaled = [doc for doc in yaml.safe_load_all(render(kubectl, CPU_SCALED)) if doc]
    resources = container(scaled)["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["limits"]["memory"] == MEMORY
    assert int(resources["limits"]["cpu"].removesuffix("m")) < int(CPU.removesuffix("m"))
    container(scaled)["resources"] = container(base)["resources"]
    assert scaled == base


def test_service_is_a_node_port_in_the_legal_range(rendered: Rendered) -> None:
    service = by_kind(rendered.docs, "Service")
    assert service["spec"]["type"] == "NodePort"
    (port,) = service["spec"]["ports"]
    assert port["nodePort"] in NODE_PORT_RANGE


def test_selector_matches_the_pod_labels_and_the_service(rendered: Rendered) -> None:
    deployment = by_kind(rendered.docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind(rendered.docs, "Service")
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"]):
        assert selector.items() <= labels.items()


def test_container_port_is_the_service_target_and_the_image_port(rendered: Rendered) -> None:
    (container_port,) = container(rendered.docs)["ports"]
    (service_port,) = by_kind(rendered.docs, "Service")["spec"]["ports"]
    exposed = re.findall(r"^EXPOSE (\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert container_port["containerPort"] == service_port["targetPort"] == Settings().port == int(exposed[0])


def test_probes_use_readyz_and_healthz_with_a_startup_allowance(rendered: Rendered) -> None:
    spec = container(rendered.docs)
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = spec["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_pod_runs_unprivileged_with_a_read_only_root_and_a_writable_tmp(rendered: Rendered) -> None:
    pod = by_kind(rendered.docs, "Deployment")["spec"]["template"]["spec"]
    spec = container(rendered.docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[next(name for name, path in mounts.items() if path == "/tmp")]


def test_grace_period_covers_the_drain_and_the_graceful_timeout(rendered: Rendered) -> None:
    pod = by_kind(rendered.docs, "Deployment")["spec"]["template"]["spec"]
    spec = container(rendered.docs)
    env = {e["name"]: e for e in spec["env"]}
    graceful_s = int(env.get("CLOUDDETECT_GRACEFUL_TIMEOUT_S", {}).get("value", Settings().graceful_timeout_s))
    pre_stop_s = int(spec["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + graceful_s


def test_pod_name_reaches_the_logs_through_the_downward_api(rendered: Rendered) -> None:
    env = {e["name"]: e for e in container(rendered.docs)["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_overlays_set_their_replica_count(rendered: Rendered) -> None:
    name = rendered.folder.name
    expected = int(name.removeprefix("replicas-")) if name.startswith("replicas-") else 1
    assert by_kind(rendered.docs, "Deployment")["spec"]["replicas"] == expected
