"""The simulated remote client for real (as root): a namespace of its own, kernel shaping, the delay relay.

Each test uses a namespace and subnet of its own and checks that nothing named after it is left afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clouddetect.lab.network.link import TOOLS, LinkSettings, Names, SimulatedLink
from clouddetect.lab.network.probe import ProbeSettings, measure
from support import live_server

pytestmark = pytest.mark.slow
POD_NAME = "remote-test-pod"
COMMAND_TIMEOUT_S = 300.0
NAMESPACE_ENTRY_TIMEOUT_S = 10.0


@pytest.fixture(scope="module", autouse=True)
def link_tools() -> None:
    """ip and tc (iproute2) and iptables, installed as CI installs what it needs."""
    assert os.geteuid() == 0, "the simulated link needs root (network namespaces, tc, iptables)"
    if any(shutil.which(tool) is None for tool in TOOLS):
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "iproute2", "iptables"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def settings_for(test: str, subnet_index: int, **changes: float) -> LinkSettings:
    return LinkSettings(name=f"cdtest-{test}-{os.getpid()}", subnet=f"10.213.{200 + subnet_index}.0/30", **changes)


def output(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def wait_until_in_namespace(namespace: str, pid: int | None = None) -> list[str]:
    """The processes in ``namespace`` once ``pid`` (or any) is among them: ``ip netns exec`` enters a moment late."""
    deadline = time.monotonic() + NAMESPACE_ENTRY_TIMEOUT_S
    while not (pids := output("ip", "netns", "pids", namespace).split()) or (pid and str(pid) not in pids):
        assert time.monotonic() < deadline, f"no process entered {namespace}"
        time.sleep(0.05)
    return pids


def assert_nothing_left(settings: LinkSettings) -> None:
    names = Names(settings.name)
    assert settings.name not in output("ip", "netns", "list").split()
    links = output("ip", "-o", "link", "show")
    assert names.host_interface not in links and names.remote_interface not in links
    assert names.chain not in output("iptables", "-t", "nat", "-S")


def test_link_comes_up_shaped_and_goes_away_without_leftovers() -> None:
    settings = settings_for("clean", 0, bandwidth_mbit=42)
    with SimulatedLink(settings) as link:
        names = link.names
        assert settings.name in output("ip", "netns", "list").split()
        assert "tbf" in output("tc", "qdisc", "show", "dev", names.host_interface)
        assert "rate 42Mbit" in output("tc", "-n", settings.name, "qdisc", "show", "dev", names.remote_interface)
        assert f"inet {link.remote_address}/30" in output("ip", "-n", settings.name, "addr", "show")
        assert f"-j {names.chain}" in output("iptables", "-t", "nat", "-S", "PREROUTING")
        left_running = subprocess.Popen(link.command(["sleep", "600"]))
        wait_until_in_namespace(settings.name, left_running.pid)
    assert left_running.wait(timeout=30) < 0  # stopped by a signal when the link went away
    assert_nothing_left(settings)


def test_link_run_stopped_with_sigterm_stops_its_command_and_removes_the_link() -> None:
    settings = settings_for("sigterm", 4)
    wrapper = subprocess.Popen([sys.executable, "-m", "clouddetect", "lab", "link", "run", "--name", settings.name,
                                "--subnet", settings.subnet, "--", "sleep", "600"], stderr=subprocess.PIPE, text=True)
    assert wrapper.stderr is not None
    assert "link up" in wrapper.stderr.readline()
    [sleeper] = wait_until_in_namespace(settings.name)
    wrapper.terminate()
    assert wrapper.wait(timeout=60) == 128 + signal.SIGTERM
    assert not Path(f"/proc/{sleeper}").exists()
    assert_nothing_left(settings)


def test_a_link_name_in_use_is_refused_and_the_first_link_survives() -> None:
    settings = settings_for("twice", 1)
    with SimulatedLink(settings):
        with pytest.raises(RuntimeError, match="exists"):
            SimulatedLink(settings).up()
        assert settings.name in output("ip", "netns", "list").split()
    assert_nothing_left(settings)


@pytest.mark.parametrize(("rtt_ms", "bandwidth_mbit", "transfer_bytes"), [(20, 100, 8_000_000), (80, 20, 3_000_000)])
def test_measured_round_trip_and_bandwidth_follow_the_settings(rtt_ms: float, bandwidth_mbit: float,
                                                               transfer_bytes: int) -> None:
    settings = settings_for(f"measure{rtt_ms}", 2, rtt_ms=rtt_ms, bandwidth_mbit=bandwidth_mbit)
    with SimulatedLink(settings) as link:
        figures = measure(settings.name, link.host_address, ProbeSettings(transfer_bytes, 10, 60.0))
    assert rtt_ms * 0.95 <= figures.rtt_ms <= rtt_ms * 1.25 + 5
    assert 2 * rtt_ms * 0.95 <= figures.first_answer_ms <= 2 * (rtt_ms * 1.25 + 5)
    # tbf counts the Ethernet, IP and TCP headers too: the payload gets ~95% of the rate.
    for mbit in (figures.upload_mbit, figures.download_mbit):
        assert bandwidth_mbit * 0.85 <= mbit <= bandwidth_mbit * 1.1  # tbf's burst lets a short transfer run ahead
    assert_nothing_left(settings)


def test_lab_run_from_the_namespace_reaches_a_loopback_server_and_records_the_link(tmp_path: Path,
                                                                                   images: list[Path]) -> None:
    settings = settings_for("lab", 3, rtt_ms=300, bandwidth_mbit=50)
    out = tmp_path / "remote"
    with live_server(tmp_path, "--max-waiting-requests", "2", env={"POD_NAME": POD_NAME}) as server:
        # The host's loopback as the namespace reaches it.
        url = server.url.replace("127.0.0.1", SimulatedLink(settings).host_address)
        result = subprocess.run(
            [sys.executable, "-m", "clouddetect", "lab", "link", "run", "--name", settings.name, "--subnet",
             settings.subnet, "--rtt-ms", "300", "--bandwidth-mbit", "50", "--",
             sys.executable, "-m", "clouddetect", "lab", "run", "--client-location", "remote",
             "--url", url, "--out", str(out), "--images", str(images[0].parent),
             "--repeats", "1", "--hold-s", "3", "--poll-interval-s", "0.2", "--progress-interval-s", "1"],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    conditions = json.loads((out / "experiment.json").read_text())
    assert conditions["client_link"]["rtt_ms"] == 300 and conditions["client_link"]["bandwidth_mbit"] == 50
    [run] = json.loads((out / "runs.json").read_text())
    assert run["client_location"] == "remote" and run["endpoint"] == url
    # Two requests wait at the server at most; users whose request is on the 300 ms link do not count, so two or more.
    assert run["pod_names"] == [POD_NAME] and run["max_users"] >= 2
    assert run["requests_sent"] == run["requests_judged"] > 0
    # No answer can come sooner than the link's round trip (without the link the fastest is one inference).
    stats = (out / "raw" / "remote-pods-1-repeat-1" / "search_stats.csv").read_text().splitlines()
    header, aggregated = stats[0].split(","), stats[-1].split(",")
    assert float(aggregated[header.index("Min Response Time")]) >= 300
    assert_nothing_left(settings)
