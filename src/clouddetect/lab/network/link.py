"""A simulated remote client: a network namespace whose link to this host has a WAN's round trip and bandwidth.

The namespace has its own address on a veth pair; the host end has another. Bandwidth is real kernel shaping:
``tbf`` on both ends (the namespace's end shapes what the client sends, the host's end what it receives). Delay
cannot come from the kernel here (no ``netem``), so every TCP connection leaving the namespace is redirected
(iptables REDIRECT on the host end) to a user-space delay relay on the host, which connects on to where the client
meant to go: to ``127.0.0.1:PORT`` when it was the host end's address (loopback-bound services, a NodePort served
on 127.0.0.1), to any other address as it was (node addresses on a bridge, reached from the host). The relay runs on
the host side because only a connection the host itself makes passes kube-proxy's rules for local clients and
needs no route back from the nodes to the namespace. Only TCP is delayed (ping is not).

Everything the link creates is named after its namespace, so ``remove(name)`` can clean up after a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clouddetect.lab.network.relay import DelayRelay, RelaySettings, loopback_route
from clouddetect.settings_fields import setting, settings_values

# Set for a command run in the namespace: the link's conditions (JSON), which `lab run` records, and the host's
# address on the link, where this host's services are reached.
CONDITIONS_ENV = "CLOUDDETECT_LAB_CLIENT_LINK"
HOST_ADDRESS_ENV = "CLOUDDETECT_LINK_HOST"
SETTINGS_ENV_PREFIX = "CLOUDDETECT_LINK_"
TOOLS = ("ip", "tc", "iptables")
STOP_POLL_INTERVAL_S = 0.05
METHOD = "network namespace + veth; bandwidth: tbf on both ends; delay: user-space TCP relay (rtt/2 each way)"

Echo = Callable[[str], None]


class LinkError(RuntimeError):
    """The link cannot be set up here (not root, tools missing, name in use)."""


@dataclass(frozen=True)
class LinkSettings:
    rtt_ms: float = setting(20.0, "Round trip the link adds to every TCP exchange (half each way).")
    bandwidth_mbit: float = setting(100.0, "Rate of each direction of the link, in Mbit/s.")
    name: str = setting("clouddetect-remote", "Name of the network namespace; its veths and rules derive from it.")
    subnet: str = setting("10.213.0.0/30", "The link's addresses: the host end takes the first, the client the next.")
    tbf_burst_bytes: int = setting(32768, "Bytes tbf sends at once at full speed before shaping applies.")
    tbf_queue_ms: float = setting(50.0, "Longest a packet waits in tbf's queue before it is dropped.")
    relay_buffer_bytes: int = setting(4 * 1024 * 1024, "Bytes the relay holds per direction of a connection.")
    relay_read_bytes: int = setting(64 * 1024, "Largest chunk the relay reads at once.")
    relay_max_connections: int = setting(4096, "Connections relayed at once; later ones wait until one closes.")
    relay_connect_timeout_s: float = setting(10.0, "Time the relay allows to connect on to a destination.")
    stop_timeout_s: float = setting(10.0, "Time processes left in the namespace (and the relay) get to stop.")
    command_timeout_s: float = setting(30.0, "Time each ip, tc or iptables command is allowed.")

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or self.bandwidth_mbit <= 0:
            raise ValueError("rtt_ms must be at least 0 and bandwidth_mbit above 0")
        if self.relay_buffer_bytes < self.bandwidth_delay_bytes:
            raise ValueError(f"relay_buffer_bytes ({self.relay_buffer_bytes}) must hold what the link carries in a "
                             f"round trip ({self.bandwidth_delay_bytes} bytes), or the relay caps the bandwidth")
        if ipaddress.ip_network(self.subnet).num_addresses < 4:
            raise ValueError(f"subnet {self.subnet} is too small: it needs two host addresses")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> LinkSettings:
        """Defaults, then ``CLOUDDETECT_LINK_<NAME>`` environment variables, then the given overrides."""
        return cls(**settings_values(cls, SETTINGS_ENV_PREFIX, environ, overrides))

    @property
    def bandwidth_delay_bytes(self) -> int:
        return int(self.bandwidth_mbit * 1e6 / 8 * self.rtt_ms / 1000)

    @property
    def relay(self) -> RelaySettings:
        return RelaySettings(self.rtt_ms, self.relay_buffer_bytes, self.relay_read_bytes, self.relay_max_connections,
                             self.relay_connect_timeout_s, self.stop_timeout_s)


@dataclass(frozen=True)
class Names:
    """What a link called ``namespace`` creates on the host (interface names are limited to 15 characters)."""

    namespace: str

    @property
    def _tag(self) -> str:
        return hashlib.sha256(self.namespace.encode()).hexdigest()[:8]

    @property
    def host_interface(self) -> str:
        return f"cdl{self._tag}h"

    @property
    def remote_interface(self) -> str:
        return f"cdl{self._tag}r"

    @property
    def chain(self) -> str:
        return f"CLOUDDETECT-LINK-{self._tag}"


def link_conditions(settings: LinkSettings) -> dict[str, Any]:
    """What an experiment records about a client behind this link."""
    return {"simulated": True, "rtt_ms": settings.rtt_ms, "bandwidth_mbit": settings.bandwidth_mbit,
            "method": METHOD}


def client_link_conditions(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The simulated link this process runs behind (set by ``lab link run``), or None for the machine's own network."""
    raw = (os.environ if environ is None else environ).get(CONDITIONS_ENV)
    return json.loads(raw) if raw else None


class Shell:
    """Runs ip, tc and iptables, each command printed first."""

    def __init__(self, timeout_s: float, echo: Echo):
        self.timeout_s = timeout_s
        self.echo = echo

    def __call__(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.echo("+ " + " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s)
        if check and result.returncode != 0:
            raise LinkError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result

    def quiet(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s)


def check_can_build() -> None:
    if os.geteuid() != 0:
        raise LinkError("a simulated link needs root (network namespaces, tc, iptables)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise LinkError(f"{', '.join(missing)} not found: apt-get install iproute2 iptables")


class SimulatedLink:
    """``with SimulatedLink(settings) as link:`` the namespace is up; on leaving, nothing of it remains."""

    def __init__(self, settings: LinkSettings, echo: Echo = lambda _line: None):
        self.settings = settings
        self.names = Names(settings.name)
        network = ipaddress.ip_network(settings.subnet)
        hosts = network.hosts()
        self.host_address = str(next(hosts))
        self.remote_address = str(next(hosts))
        self.prefix = network.prefixlen
        self.shell = Shell(settings.command_timeout_s, echo)
        self.echo = echo
        self.relay: DelayRelay | None = None

    def __enter__(self) -> SimulatedLink:
        self.up()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.down()

    def up(self) -> None:
        check_can_build()
        if self.shell.quiet("ip", "netns", "pids", self.settings.name).returncode == 0:
            raise LinkError(f"network namespace {self.settings.name} exists: another link is up, or one was killed; "
                            f"`clouddetect lab link remove --name {self.settings.name}` removes it")
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def _build(self) -> None:
        sh, ns, names = self.shell, self.settings.name, self.names
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", names.host_interface, "type", "veth", "peer", "name", names.remote_interface)
        sh("ip", "link", "set", names.remote_interface, "netns", ns)
        sh("ip", "addr", "add", f"{self.host_address}/{self.prefix}", "dev", names.host_interface)
        sh("ip", "link", "set", names.host_interface, "up")
        sh("ip", "-n", ns, "addr", "add", f"{self.remote_address}/{self.prefix}", "dev", names.remote_interface)
        sh("ip", "-n", ns, "link", "set", names.remote_interface, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", self.host_address)
        sh("tc", "qdisc", "add", "dev", names.host_interface, "root", *self._tbf())
        sh("tc", "-n", ns, "qdisc", "add", "dev", names.remote_interface, "root", *self._tbf())
        relay = DelayRelay(self.settings.relay, self.host_address,
                           loopback_route(self.host_address, lambda: relay.port))
        self.relay = relay
        port = relay.start()
        self.echo(f"delay relay on {self.host_address}:{port}: {self.settings.rtt_ms:g} ms round trip")
        sh("iptables", "-t", "nat", "-N", names.chain)
        sh("iptables", "-t", "nat", "-A", names.chain, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(port))
        sh("iptables", "-t", "nat", "-I", "PREROUTING", "1", *self._jump())

    def _tbf(self) -> list[str]:
        return ["tbf", "rate", f"{self.settings.bandwidth_mbit:g}mbit", "burst", str(self.settings.tbf_burst_bytes),
                "latency", f"{self.settings.tbf_queue_ms:g}ms"]

    def _jump(self) -> list[str]:
        return ["-i", self.names.host_interface, "-p", "tcp", "-j", self.names.chain]

    def down(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        remove(self.settings.name, self.settings.stop_timeout_s, self.shell)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.settings.name, *argv]

    def environment(self) -> dict[str, str]:
        return {CONDITIONS_ENV: json.dumps(link_conditions(self.settings)), HOST_ADDRESS_ENV: self.host_address}

    def describe(self) -> str:
        return (f"namespace {self.settings.name} ({self.remote_address}) -> host {self.host_address}: "
                f"{self.settings.rtt_ms:g} ms round trip, {self.settings.bandwidth_mbit:g} Mbit/s each way; "
                f"this host's loopback services are at {self.host_address}:PORT")


def remove(namespace: str, stop_timeout_s: float, shell: Shell) -> list[str]:
    """Remove what a link named ``namespace`` created, whatever is left of it; returns what was removed."""
    names = Names(namespace)
    removed = []
    pids = shell.quiet("ip", "netns", "pids", namespace)
    if pids.returncode == 0:
        _stop_processes([int(p) for p in pids.stdout.split()], stop_timeout_s)
    jump = ["-i", names.host_interface, "-p", "tcp", "-j", names.chain]
    while shell.quiet("iptables", "-t", "nat", "-C", "PREROUTING", *jump).returncode == 0:
        shell("iptables", "-t", "nat", "-D", "PREROUTING", *jump)
        removed.append("iptables jump")
    if shell.quiet("iptables", "-t", "nat", "-L", names.chain).returncode == 0:
        shell("iptables", "-t", "nat", "-F", names.chain)
        shell("iptables", "-t", "nat", "-X", names.chain)
        removed.append(f"iptables chain {names.chain}")
    if shell.quiet("ip", "link", "show", names.host_interface).returncode == 0:
        shell("ip", "link", "del", names.host_interface)  # takes its peer and both qdiscs with it
        removed.append(f"veth {names.host_interface}")
    if pids.returncode == 0:
        shell("ip", "netns", "del", namespace)
        removed.append(f"namespace {namespace}")
    return removed


def _stop_processes(pids: list[int], timeout_s: float) -> None:
    """Processes still in the namespace were started in it by the link's command: TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for pid in pids if _alive(pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(STOP_POLL_INTERVAL_S)


def _alive(pid: int) -> bool:
    """Running, not a zombie (a child of ours that ended is a zombie until it is waited for)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
