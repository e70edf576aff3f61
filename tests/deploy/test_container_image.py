"""The image, built with `make image` and run under a pod's limits: real images in, real answers out.

The Docker engine and the base image are provided by the project's own scripts (through `make image`), so these
tests run on a fresh machine as root; deselect them explicitly with `-m "not docker"`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from slow_attack import assert_honest_answered_and_slow_cut_off, attack

from clouddetect.codec import decode_image
from clouddetect.detector import Detector
from clouddetect.request_json import response_body
from clouddetect.verdicts import ENDPOINT, response_problem
from support import assert_same_objects, free_port, request_body

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "clouddetect:test"
CODE_CHANGE_IMAGE = "clouddetect:test-code-change"
BASE_IMAGE = "python:3.11-slim-bookworm"
POD_LIMITS = ["--cpus", "0.5", "--memory", "512m"]
READY_TIMEOUT_S = 120.0
HEALTHY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40
IMAGES_SENT = 8
BUILD_TOOLS = ["gcc", "cc", "g++", "make", "pip", "pip3", "vim", "vi", "nano"]
# Slow clients of each kind through the published port, as many as on loopback: ~40 MiB more inside the pod's 512 MiB;
# cut off at short deadlines, so that the whole attack takes well under a minute.
SLOW_CLIENTS_PER_KIND = 1000
SLOW_HEADER_TIMEOUT_S = 4.0
SLOW_BODY_TIMEOUT_S = 6.0
CGROUP_MEMORY = "/sys/fs/cgroup/memory"  # cgroup v1, as Docker runs here


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True)


def layers(image: str) -> list[str]:
    return json.loads(docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", image).stdout)


def make_image(tag: str, *variables: str) -> str:
    started = time.monotonic()
    subprocess.run(["make", "-C", str(ROOT), "image", f"IMAGE={tag}", *variables], check=True)
    size = docker("image", "ls", "--format", "{{.Size}}", tag).stdout.strip()
    print(f"\nmake image {' '.join(variables)}: {time.monotonic() - started:.1f} s; {tag} is {size} (docker image ls)")
    return tag


@pytest.fixture(scope="module")
def image() -> str:
    return make_image(IMAGE)


@dataclass
class Container:
    name: str
    url: str

    def logs(self) -> str:
        result = docker("logs", self.name)
        return result.stdout + result.stderr

    def state(self, field: str) -> str:
        return docker("inspect", "--format", "{{" + field + "}}", self.name).stdout.strip()


def wait_ready(container: Container) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if container.state(".State.Running") != "true":
            raise RuntimeError(f"container exited:\n{container.logs()}")
        try:
            if requests.get(container.url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not ready within {READY_TIMEOUT_S} s:\n{container.logs()}")


@contextmanager
def run_as_a_pod(image: str, env: dict[str, str] | None = None) -> Iterator[Container]:
    """The image as Kubernetes runs it: 0.5 CPU, 512 MiB, read-only root, a writable /tmp, published on loopback."""
    name = f"clouddetect-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    settings = [f"--env={key}={value}" for key, value in (env or {}).items()]
    docker("run", "--detach", "--name", name, *POD_LIMITS, "--read-only", "--tmpfs", "/tmp",
           "--env", f"POD_NAME={name}", *settings, "--publish", f"127.0.0.1:{port}:5000", image)
    running = Container(name=name, url=f"http://127.0.0.1:{port}")
    try:
        wait_ready(running)
        yield running
    finally:
        docker("rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    with run_as_a_pod(image) as running:
        yield running


def assert_answers_as_the_local_detector(container: Container, images: list[Path], detector: Detector) -> None:
    for path in images[:IMAGES_SENT]:
        body = request_body(path)
        answer = requests.post(container.url + ENDPOINT, json=body, timeout=REQUEST_TIMEOUT_S)
        assert answer.status_code == 200, answer.text
        assert response_problem(answer.json(), body["id"]) is None
        expected = response_body(body["id"], detector.detect(decode_image(path.read_bytes())))
        assert answer.json()["id"] == expected["id"]
        assert_same_objects(answer.json()["objects"], expected["objects"], path.name)


def test_image_answers_real_images_as_the_local_detector_does(
    container: Container, images: list[Path], detector: Detector
) -> None:
    assert_answers_as_the_local_detector(container, images, detector)


def test_the_image_times_its_engines_in_the_pods_limits_and_keeps_the_reference_answers(
    container: Container, images: list[Path], detector: Detector
) -> None:
    ready = requests.get(container.url + "/readyz", timeout=REQUEST_TIMEOUT_S).json()
    assert ready["choice"].startswith("auto:") and "of 512 MiB" in ready["choice"], "the pod's limit, not the host's"
    assert {t["verdict"] for t in ready["trials"]} <= {"kept", "slower", "over the memory budget"}, ready["trials"]
    assert len(ready["trials"]) == 2, "both engines ship in the image"
    assert_answers_as_the_local_detector(container, images, detector)


def test_the_runtime_holds_only_what_cpu_inference_on_the_ir_loads(container: Container) -> None:
    probe = ("import importlib.util, pathlib, openvino; libs = pathlib.Path(openvino.__file__).parent / 'libs'; "
             "print(importlib.util.find_spec('onnx') is None, sorted(p.name for p in libs.glob('*plugin*')), "
             "sorted(p.name.split('.')[0] for p in libs.glob('*frontend*')))")
    shown = docker("exec", container.name, "python", "-c", probe).stdout.split(maxsplit=1)
    assert shown[0] == "True", "the converter's onnx package is left out of the runtime"
    assert shown[1].strip() == "['libopenvino_intel_cpu_plugin.so'] ['libopenvino_ir_frontend']"
    model = docker("exec", container.name, "ls", "/opt/clouddetect/model").stdout.split()
    assert "yolov3-tiny.xml" in model and "yolov3-tiny.onnx" not in model
    assert "openvino_telemetry" not in container.logs()


def test_each_request_is_logged_with_the_instance_name(container: Container, images: list[Path]) -> None:
    body = request_body(images[0])
    requests.post(container.url + ENDPOINT, json=body, timeout=REQUEST_TIMEOUT_S).raise_for_status()
    assert f"request id={body['id']} status=200" in container.logs()
    assert f"instance={container.name}" in container.logs()


def test_runs_under_a_pods_limits(container: Container) -> None:
    assert container.state(".HostConfig.NanoCpus") == str(500_000_000)
    assert container.state(".HostConfig.Memory") == str(512 * 1024 * 1024)
    assert container.state(".HostConfig.ReadonlyRootfs") == "true"


def test_service_process_is_not_root(container: Container) -> None:
    uids = docker("exec", container.name, "sh", "-c", "stat -c %u /proc/[0-9]*").stdout.split()
    assert uids and "0" not in uids
    assert docker("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip() == "10001:10001"


def test_health_check_reports_healthy(container: Container) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while (status := container.state(".State.Health.Status")) == "starting" and time.monotonic() < deadline:
        time.sleep(1)
    assert status == "healthy", container.state("json .State.Health")


def build_tools_and_apt_caches(image: str) -> set[str]:
    return set(docker("run", "--rm", "--entrypoint", "sh", image, "-c",
                      f"for t in {' '.join(BUILD_TOOLS)}; do command -v $t || true; done; "
                      "ls /var/lib/apt/lists /var/cache/apt/archives | grep -v -e '^/' -e '^$' -e '^lock$' "
                      "-e '^partial$' -e '^auxfiles$' || true").stdout.split())


def test_image_adds_no_build_tools_or_apt_caches_to_its_base(image: str) -> None:
    assert build_tools_and_apt_caches(image) <= build_tools_and_apt_caches(BASE_IMAGE)
    venv_tools = docker("run", "--rm", "--entrypoint", "ls", image, "/opt/venv/bin").stdout.split()
    assert not {"pip", "pip3"} & set(venv_tools)


def test_sigterm_stops_the_container_cleanly(image: str) -> None:
    name = f"clouddetect-stop-{uuid.uuid4().hex[:8]}"
    port = free_port()
    docker("run", "--detach", "--name", name, *POD_LIMITS, "--read-only", "--tmpfs", "/tmp",
           "--publish", f"127.0.0.1:{port}:5000", image)
    stopping = Container(name=name, url=f"http://127.0.0.1:{port}")
    try:
        wait_ready(stopping)
        docker("stop", "--time", str(STOP_TIMEOUT_S), name)
        assert stopping.state(".State.ExitCode") == "0", stopping.logs()
        assert stopping.state(".State.OOMKilled") == "false"
        assert "clouddetect.server: stopped" in stopping.logs()
    finally:
        docker("rm", "--force", name, check=False)


def test_code_only_change_reuses_the_dependency_and_model_layers(image: str, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (context / "src" / "clouddetect" / "api.py").open("a") as api:
        api.write(f"\n# code-only change {uuid.uuid4()}\n")
    started = time.monotonic()
    docker("build", "--file", str(ROOT / "Dockerfile"), "--tag", CODE_CHANGE_IMAGE, str(context))
    print(f"\nrebuild after a code-only change: {time.monotonic() - started:.1f} s")
    try:
        before, after = layers(image), layers(CODE_CHANGE_IMAGE)
        assert len(before) == len(after)
        assert before[:-1] == after[:-1], "the base, dependency or model layer was rebuilt"
        assert before[-1] != after[-1]
    finally:
        docker("rmi", CODE_CHANGE_IMAGE, check=False)


def cgroup_memory_mib(container: Container, name: str) -> float:
    return int(docker("exec", container.name, "cat", f"{CGROUP_MEMORY}/{name}").stdout) / 1024**2


def test_slow_clients_through_the_published_port_are_cut_off_while_honest_requests_are_answered(
    image: str, images: list[Path]
) -> None:
    """Slow clients reach the server through Docker's port forwarding as they would from outside; the honest requests
    keep their answers, the slow ones are cut at the deadlines given in the environment, and the container stays
    within its memory limit."""
    env = {"CLOUDDETECT_HEADER_TIMEOUT_S": str(SLOW_HEADER_TIMEOUT_S),
           "CLOUDDETECT_BODY_TIMEOUT_S": str(SLOW_BODY_TIMEOUT_S)}
    with run_as_a_pod(image, env) as container:
        payload = request_body(images[1], "honest")
        expected = requests.post(container.url + ENDPOINT, json=payload, timeout=REQUEST_TIMEOUT_S).json()
        idle_mib = cgroup_memory_mib(container, "memory.usage_in_bytes")
        result = attack(container.url, SLOW_CLIENTS_PER_KIND, payload,
                        lambda: cgroup_memory_mib(container, "memory.usage_in_bytes"), SLOW_BODY_TIMEOUT_S)
        peak_mib = cgroup_memory_mib(container, "memory.max_usage_in_bytes")
        print(f"\ncontainer: {result.summary()} (idle {idle_mib:.0f} MiB, cgroup peak since start {peak_mib:.0f} MiB)")
        assert requests.post(container.url + ENDPOINT, json=payload, timeout=REQUEST_TIMEOUT_S).json() == expected
        logs = container.logs()
        assert container.state(".State.OOMKilled") == "false"
        limit_mib = int(container.state(".HostConfig.Memory")) / 1024**2
    assert_honest_answered_and_slow_cut_off(result, expected, SLOW_HEADER_TIMEOUT_S, SLOW_BODY_TIMEOUT_S)
    assert logs.count("too slow: headers not complete") == SLOW_CLIENTS_PER_KIND
    assert logs.count("body bytes in") == SLOW_CLIENTS_PER_KIND
    assert peak_mib < limit_mib
