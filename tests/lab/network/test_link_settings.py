"""The simulated link's settings: defaults, then CLOUDDETECT_LINK_* variables, then flags; impossible ones refused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clouddetect.cli import main
from clouddetect.lab.network.link import CONDITIONS_ENV, LinkSettings, Names, client_link_conditions, link_conditions

INTERFACE_NAME_MAX_CHARS = 15


def test_environment_then_overrides() -> None:
    settings = LinkSettings.load({"CLOUDDETECT_LINK_RTT_MS": "35", "CLOUDDETECT_LINK_BANDWIDTH_MBIT": "50"},
                                 bandwidth_mbit=20.0)
    assert (settings.rtt_ms, settings.bandwidth_mbit) == (35.0, 20.0)


def test_a_relay_buffer_smaller_than_a_round_trip_of_data_is_refused() -> None:
    # 100 Mbit/s for 400 ms is 5 MB in flight: a 4 MiB buffer would cap the bandwidth below the setting.
    with pytest.raises(ValueError, match="relay_buffer_bytes"):
        LinkSettings(rtt_ms=400, bandwidth_mbit=100)
    assert LinkSettings(rtt_ms=400, bandwidth_mbit=100, relay_buffer_bytes=8 * 1024 * 1024).rtt_ms == 400


def test_a_subnet_without_two_host_addresses_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        LinkSettings(subnet="10.213.0.0/31")


def test_names_fit_the_kernels_limits_and_differ_per_namespace() -> None:
    first, second = Names("clouddetect-remote-with-a-long-name"), Names("another")
    for names in (first, second):
        assert len(names.host_interface) <= INTERFACE_NAME_MAX_CHARS
        assert len(names.remote_interface) <= INTERFACE_NAME_MAX_CHARS
    assert first.host_interface != second.host_interface and first.chain != second.chain


def test_lab_run_reads_the_links_conditions_from_the_environment_the_link_sets() -> None:
    conditions = link_conditions(LinkSettings(rtt_ms=30, bandwidth_mbit=10))
    assert client_link_conditions({CONDITIONS_ENV: json.dumps(conditions)}) == conditions
    assert conditions["rtt_ms"] == 30 and conditions["bandwidth_mbit"] == 10
    assert client_link_conditions({}) is None


def test_link_run_refuses_impossible_settings_before_touching_the_network() -> None:
    result = CliRunner().invoke(main, ["lab", "link", "run", "--bandwidth-mbit", "0", "--", "true"])
    assert result.exit_code == 2 and "bandwidth_mbit above 0" in result.output
