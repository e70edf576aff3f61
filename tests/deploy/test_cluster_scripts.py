"""The shell scripts pass shellcheck, the cluster recipe's dry runs plan what the cluster needs, and its firewall
step runs for real on a host with Oracle's REJECT rules."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support import stand_in_commands

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster"
NODE_ROLE_SCRIPTS = ["node-setup", "controller-init", "worker-join", "load-image", "deploy", "tour"]
SCRIPTS = [ROOT / "scripts" / "docker-engine", ROOT / "scripts" / "base-image", ROOT / "scripts" / "test-cluster",
           CLUSTER / "lib.sh",
           *(CLUSTER / name for name in NODE_ROLE_SCRIPTS)]
# A host of this machine's own for the firewall test: a network namespace behind a veth, as Oracle's images come.
FIREWALL_HOST = "cdtest-fw"
FIREWALL_VETH = "cdtfw0"
FIREWALL_HOST_IP = "10.253.0.2"
FIREWALL_PEER_IP = "10.253.0.1"
FIREWALL_PREFIX_LENGTH = 30
ORACLE_RULES = [  # SSH in, the rest rejected
    "INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
    "INPUT -i lo -j ACCEPT",
    "INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT",
    "INPUT -j REJECT --reject-with icmp-host-prohibited",
    "FORWARD -j REJECT --reject-with icmp-host-prohibited",
]
CLOSED_PORT = 8080  # in no role's list
CONNECT_TIMEOUT_S = 2.0
LISTEN_TIMEOUT_S = 10.0
JOIN_ARGS = ["10.0.0.10:6443", "--token", "abcdef.0123456789abcdef", "--discovery-token-ca-cert-hash", "sha256:00"]


def dry_run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLUSTER / script), *args], capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1"})


def planned(script: str, *args: str) -> str:
    result = dry_run(script, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def commands(plan: str) -> list[str]:
    return [line[2:] for line in plan.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_passes_shellcheck_and_parses(script: Path) -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    checked = subprocess.run([str(shellcheck), "-x", str(script)], capture_output=True, text=True, cwd=script.parent)
    assert checked.returncode == 0, checked.stdout
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_is_strict(script: Path) -> None:
    text = script.read_text()
    assert script.name == "lib.sh" or "set -euo pipefail" in text
    assert script.name == "lib.sh" or os.access(script, os.X_OK)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"ignore=\S+\s+#?\s*\w+", line), f"ignored rule without a reason: {line}"


def test_kubeadm_kubelet_and_kubectl_are_pinned_to_one_version_and_held() -> None:
    plan = planned("node-setup", "worker")
    (install,) = [c for c in commands(plan) if "apt-get install" in c and "kubeadm=" in c]
    versions = dict(re.findall(r"\b(kubelet|kubeadm|kubectl)=(\S+)", install))
    assert versions.keys() == {"kubelet", "kubeadm", "kubectl"} and len(set(versions.values())) == 1
    assert "apt-mark hold kubelet kubeadm kubectl" in commands(plan)
    version = next(iter(versions.values())).split("-")[0]
    assert f"--kubernetes-version v{version}" in planned("controller-init", "10.0.0.10")


def test_nodes_get_docker_engine_and_its_containerd_with_cri_the_systemd_cgroup_driver_and_no_swap() -> None:
    plan = "\n".join(commands(planned("node-setup", "controller")))
    (install,) = [c for c in plan.splitlines() if "apt-get install" in c and "docker-ce" in c]
    assert "containerd.io" in install and "docker-ce-cli" in install
    assert "https://download.docker.com/linux/ubuntu" in planned("node-setup", "controller")
    assert "containerd config default" in plan and "SystemdCgroup = true" in plan
    assert "swapoff -a" in plan
    assert "net.ipv4.ip_forward = 1" in planned("node-setup", "controller")


def firewall_ports(role: str) -> set[str]:
    return {m for c in commands(planned("node-setup", role)) for m in re.findall(r"-p (\w+) .*--dport (\S+)", c)}


def test_controller_firewall_opens_the_api_server_kubelet_network_and_node_ports() -> None:
    ports = {f"{proto}/{port}" for proto, port in firewall_ports("controller")}
    assert {"tcp/6443", "tcp/2379:2380", "tcp/10250", "udp/8472", "tcp/30000:32767"} <= ports


@pytest.mark.parametrize("role", ["controller", "worker"])
def test_firewall_rules_go_ahead_of_oracles_reject_rules_and_forward_the_pod_network(role: str) -> None:
    rules = [c for c in commands(planned("node-setup", role)) if c.startswith("iptables ")]
    assert rules and all(c.startswith("iptables -I ") for c in rules)
    assert "iptables -I FORWARD -s 10.244.0.0/16 -j ACCEPT" in rules
    assert "iptables -I FORWARD -d 10.244.0.0/16 -j ACCEPT" in rules


@contextlib.contextmanager
def oracle_host() -> Iterator[list[str]]:
    """A host with Oracle's INPUT/FORWARD REJECT rules, reached over a veth; yields the prefix that runs a command
    on it."""
    on_host = ["ip", "netns", "exec", FIREWALL_HOST]
    remove_firewall_host()  # what a run that was killed left
    subprocess.run(["ip", "netns", "add", FIREWALL_HOST], check=True)
    try:
        subprocess.run(["ip", "link", "add", FIREWALL_VETH, "type", "veth", "peer", "name", "eth0", "netns",
                        FIREWALL_HOST], check=True)
        subprocess.run(["ip", "addr", "add", f"{FIREWALL_PEER_IP}/{FIREWALL_PREFIX_LENGTH}", "dev", FIREWALL_VETH],
                       check=True)
        subprocess.run(["ip", "link", "set", FIREWALL_VETH, "up"], check=True)
        for command in (["ip", "addr", "add", f"{FIREWALL_HOST_IP}/{FIREWALL_PREFIX_LENGTH}", "dev", "eth0"],
                        ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                        *(["iptables", "-A", *rule.split()] for rule in ORACLE_RULES)):
            subprocess.run([*on_host, *command], check=True)
        yield on_host
    finally:
        remove_firewall_host()


def remove_firewall_host() -> None:
    subprocess.run(["ip", "link", "delete", FIREWALL_VETH], check=False, capture_output=True)  # both of its ends
    subprocess.run(["ip", "netns", "delete", FIREWALL_HOST], check=False, capture_output=True)


@contextlib.contextmanager
def listening(on_host: list[str], ports: list[int]) -> Iterator[None]:
    servers = [subprocess.Popen([*on_host, sys.executable, "-m", "http.server", str(port), "--bind", FIREWALL_HOST_IP],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in ports]
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not all(f":{port} " in subprocess.run([*on_host, "ss", "-Hltn"], capture_output=True, text=True).stdout
                      for port in ports):
            assert time.monotonic() < deadline, f"nothing listens on {ports}"
            time.sleep(0.05)
        yield
    finally:
        for server in servers:
            server.terminate()
            server.wait()


def reachable(port: int) -> bool:
    try:
        socket.create_connection((FIREWALL_HOST_IP, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize(("role", "open_ports"), [("controller", [6443, 30500]), ("worker", [10250, 30500])])
def test_the_firewall_step_lets_the_roles_ports_through_oracles_reject_rules(role: str, open_ports: list[int],
                                                                              tmp_path: Path) -> None:
    """node-setup's firewall for real on a host with Oracle's rules: the role's ports are let in ahead of the REJECT
    rules, the rest stays rejected, a second run changes nothing, and the rules are saved."""
    saved = tmp_path / "saved"
    stand_ins = stand_in_commands(tmp_path, {"netfilter-persistent": f'#!/bin/sh\necho "$@" >>{saved}\n'})
    setup = ["env", f"PATH={stand_ins}:{os.environ['PATH']}", str(CLUSTER / "node-setup"), role, "firewall"]
    with oracle_host() as on_host, listening(on_host, [*open_ports, CLOSED_PORT]):
        assert not any(reachable(port) for port in [*open_ports, CLOSED_PORT])  # Oracle's rules hold at first
        rules = []
        for _ in range(2):
            done = subprocess.run([*on_host, *setup], capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
            rules.append(subprocess.run([*on_host, "iptables", "-S"], capture_output=True, text=True,
                                        check=True).stdout)
        assert all(reachable(port) for port in open_ports) and not reachable(CLOSED_PORT)
    assert rules[0] == rules[1]
    forward = [line for line in rules[0].splitlines() if line.startswith("-A FORWARD")]
    assert forward[-1].endswith("REJECT --reject-with icmp-host-prohibited") and len(forward) == 3
    assert saved.read_text().split() == ["save", "save"]


def test_kubernetes_version_is_one_variable_on_a_supported_minor() -> None:
    lib = (CLUSTER / "lib.sh").read_text()
    (version,) = re.findall(r"^KUBERNETES_VERSION=\$\{KUBERNETES_VERSION:-(\d+)\.(\d+)\.(\d+)\}$", lib, re.MULTILINE)
    assert (int(version[0]), int(version[1])) >= (1, 35)
    moved = subprocess.run([str(CLUSTER / "node-setup"), "worker"], capture_output=True, text=True,
                           env={**os.environ, "DRY_RUN": "1", "KUBERNETES_VERSION": "1.36.9"}).stdout
    assert "kubeadm=1.36.9-1.1" in moved and "/v1.36/deb/" in moved


def test_worker_firewall_opens_the_service_node_port_kubelet_and_network() -> None:
    ports = {f"{proto}/{port}" for proto, port in firewall_ports("worker")}
    assert {"tcp/10250", "udp/8472"} <= ports
    service = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "service.yaml").read_text())
    node_port = service["spec"]["ports"][0]["nodePort"]
    (node_ports,) = [p for p in ports if p.startswith("tcp/30000:")]
    first, last = map(int, node_ports.removeprefix("tcp/").split(":"))
    assert first <= node_port <= last


def test_controller_init_uses_the_flannel_pod_network() -> None:
    plan = planned("controller-init", "10.0.0.10")
    assert "--apiserver-advertise-address 10.0.0.10" in plan
    assert "--pod-network-cidr 10.244.0.0/16" in plan
    assert re.search(r"apply -f https://\S+/flannel/releases/download/v[\d.]+/kube-flannel.yml", plan)
    assert "kubeadm token create --print-join-command" in commands(plan)


def test_worker_join_passes_the_join_arguments_and_refuses_incomplete_ones() -> None:
    assert f"kubeadm join {' '.join(JOIN_ARGS)}" in commands(planned("worker-join", *JOIN_ARGS))
    assert dry_run("worker-join", "10.0.0.10:6443").returncode == 2


def test_load_image_copies_the_image_into_each_nodes_containerd() -> None:
    plan = commands(planned("load-image", "--image", "clouddetect:v1", "ubuntu@10.0.0.11", "ubuntu@10.0.0.12"))
    assert len(plan) == 2
    for node, command in zip(["ubuntu@10.0.0.11", "ubuntu@10.0.0.12"], plan, strict=True):
        assert "docker save 'clouddetect:v1'" in command and f"ssh '{node}'" in command
        assert "ctr --namespace k8s.io images import -" in command
    assert dry_run("load-image").returncode == 2
    (local,) = commands(planned("load-image", "local"))
    assert "ssh" not in local and "sudo ctr --namespace k8s.io images import -" in local


@pytest.mark.parametrize("replicas", [1, 2, 4, 8])
def test_deploy_applies_the_overlay_of_each_replica_count(replicas: int) -> None:
    plan = commands(planned("deploy", str(replicas)))
    assert f"kubectl apply -k {ROOT / 'deploy' / 'k8s' / 'overlays' / f'replicas-{replicas}'}" in plan
    assert any(c.startswith("kubectl rollout status deployment/clouddetect") for c in plan)


def test_deploy_refuses_a_replica_count_without_an_overlay() -> None:
    result = dry_run("deploy", "3")
    assert result.returncode == 2
    assert "replicas-4" in result.stderr


def test_node_setup_refuses_an_unknown_role() -> None:
    assert dry_run("node-setup", "master").returncode == 2


def test_controller_init_puts_the_public_address_in_the_api_server_certificate_only_when_given() -> None:
    with_public = subprocess.run([str(CLUSTER / "controller-init"), "10.0.0.10"], capture_output=True, text=True,
                                 env={**os.environ, "DRY_RUN": "1", "PUBLIC_ADDRESS": "203.0.113.10"}, check=True)
    (init,) = [c for c in commands(with_public.stdout) if c.startswith("kubeadm init")]
    assert "--apiserver-advertise-address 10.0.0.10" in init
    assert "--apiserver-cert-extra-sans 203.0.113.10" in init
    without = [c for c in commands(planned("controller-init", "10.0.0.10")) if c.startswith("kubeadm init")]
    assert len(without) == 1 and "--apiserver-cert-extra-sans" not in without[0]
