"""``clouddetect lab link run | measure | remove``: a simulated remote client for the lab's remote set."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import click

from clouddetect.lab.network.link import SETTINGS_ENV_PREFIX, LinkError, LinkSettings, Shell, SimulatedLink, remove
from clouddetect.lab.network.probe import ProbeSettings, measure
from clouddetect.settings_fields import click_options


def link_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per link setting, defaulting to ``CLOUDDETECT_LINK_<NAME>`` or the built-in value."""
    return click_options(LinkSettings, env_prefix=SETTINGS_ENV_PREFIX)(command)


def _settings(overrides: dict[str, Any]) -> LinkSettings:
    try:
        return LinkSettings.load(**overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def link() -> None:
    """A simulated remote client: a network namespace behind a link with a WAN's round trip and bandwidth."""


@link.command("run", context_settings={"ignore_unknown_options": True})
@link_options
@click.option("--verbose", is_flag=True, help="Print every ip, tc and iptables command.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(command: tuple[str, ...], verbose: bool, **overrides: Any) -> None:
    """Run COMMAND inside the namespace, then remove the link (as root).

    \b
    COMMAND finds this host's loopback services at $CLOUDDETECT_LINK_HOST:PORT, and `lab run` in it records the
    link's settings in experiment.json ("client_link"):
      clouddetect lab link run -- clouddetect lab run --client-location remote --url http://10.213.0.1:5000
    """
    settings = _settings(overrides)
    echo = _to_stderr if verbose else _quiet
    # SIGTERM leaves through the `with` below, which stops what still runs in the namespace and removes the link.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        with SimulatedLink(settings, echo) as simulated:
            process = subprocess.Popen(simulated.command(list(command)), env={**os.environ, **simulated.environment()})
            click.echo(f"link up: {simulated.describe()}", err=True)
            try:
                code = process.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the command too: let it finish its own way
                code = process.wait()
    except LinkError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"link {settings.name} removed", err=True)
    raise SystemExit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell says


@link.command("measure")
@link_options
@click.option("--transfer-bytes", default=50_000_000, show_default=True, type=click.IntRange(min=1),
              help="Bytes sent each way to measure throughput.")
@click.option("--pings", default=20, show_default=True, type=click.IntRange(min=1),
              help="One-byte exchanges whose median is the round trip.")
@click.option("--probe-timeout-s", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Time any one probe socket operation is allowed.")
def measure_command(transfer_bytes: int, pings: int, probe_timeout_s: float, **overrides: Any) -> None:
    """Bring the link up, measure its round trip and throughput each way as its client sees them, remove it."""
    settings = _settings(overrides)
    try:
        with SimulatedLink(settings) as simulated:
            figures = measure(settings.name, simulated.host_address,
                              ProbeSettings(transfer_bytes, pings, probe_timeout_s))
    except LinkError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"settings: {settings.rtt_ms:g} ms round trip, {settings.bandwidth_mbit:g} Mbit/s each way")
    click.echo(f"measured: round trip {figures.rtt_ms:.1f} ms (median of {pings}), fresh connection's first answer "
               f"{figures.first_answer_ms:.1f} ms, upload {figures.upload_mbit:.1f} Mbit/s, "
               f"download {figures.download_mbit:.1f} Mbit/s ({transfer_bytes / 1e6:g} MB each way)")


@link.command("remove")
@click.option("--name", default=LinkSettings.name, show_default=True, help="Namespace of the link.")
@click.option("--command-timeout-s", default=LinkSettings.command_timeout_s, show_default=True, type=float)
@click.option("--stop-timeout-s", default=LinkSettings.stop_timeout_s, show_default=True, type=float)
def remove_command(name: str, command_timeout_s: float, stop_timeout_s: float) -> None:
    """Remove what a link left behind (after `lab link run` was killed): processes, rules, veths, namespace."""
    removed = remove(name, stop_timeout_s, Shell(command_timeout_s, click.echo))
    click.echo(f"removed: {', '.join(removed)}" if removed else f"nothing of link {name} was left")


def _quiet(_line: str) -> None:
    pass


def _to_stderr(line: str) -> None:
    click.echo(line, err=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
