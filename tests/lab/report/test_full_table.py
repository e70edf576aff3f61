"""The committed whole table (``docs/full-table/``, made by ``benchmarks/full_table.py`` on the test cluster): every
run complete and explained, and its report made again from exactly the committed files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clouddetect.lab.capacity.experiment import ASSIGNMENT_PODS, CLIENT_LOCATIONS
from clouddetect.lab.capacity.results import Experiment
from clouddetect.lab.report import write as report
from support import apt_install

FULL_TABLE = Path(__file__).resolve().parents[3] / "docs" / "full-table"
COMMITTED_REPORT = FULL_TABLE / "report"
REPEATS = 3
PAGES = ("page-1.png", "page-2.png")


@pytest.fixture(scope="module")
def experiments() -> list[Experiment]:
    return [Experiment.load(FULL_TABLE / location) for location in CLIENT_LOCATIONS]


def test_every_cell_has_its_repeats_and_every_request_sent_was_judged(experiments: list[Experiment]) -> None:
    runs = [run for e in experiments for run in e.runs]
    assert sorted(run.key for run in runs) == sorted(
        (location, pods, repeat) for location in CLIENT_LOCATIONS for pods in ASSIGNMENT_PODS
        for repeat in range(1, REPEATS + 1))
    for run in runs:
        assert run.requests_sent == run.requests_judged > 0, run.key
        assert run.max_users > 0 and run.failures == 0, run.key


def test_every_run_carries_what_bound_it(experiments: list[Experiment]) -> None:
    for run in (run for e in experiments for run in e.runs):
        assert run.evidence is not None, run.key
        assert sorted(run.evidence["pods"]) == sorted(run.pod_names), run.key
        for pod in run.evidence["pods"].values():
            assert 0 < pod["cpu_cores_used"] <= pod["cpu_limit_cores"] * 1.05, run.key
            assert 0 <= pod["cpu_throttled_period_share"] <= 1, run.key
            assert 0 < pod["memory_peak_mib"] < pod["memory_limit_mib"], run.key
        assert run.evidence["client_cpu_core_share_max"] is not None, run.key
        assert (run.evidence["link_utilisation_share"] is not None) == (run.client_location == "remote"), run.key
        assert run.client_bound is run.evidence["client_bound"] and run.machine_bound is run.evidence["machine_bound"]
        assert set(run.pod_nodes) == set(run.pod_names) and all(run.pod_nodes.values()), run.key


def test_the_nodes_cpu_and_the_engine_are_recorded(experiments: list[Experiment]) -> None:
    for experiment in experiments:
        nodes = experiment.environment["nodes"]
        assert nodes, experiment.directory
        for node in nodes.values():
            assert node["cpu_model"] and node["isa"] and node["engines"]
        assert experiment.environment["service"]["pod_memory"] == "512Mi"


def test_the_report_is_made_again_from_the_committed_files(experiments: list[Experiment], tmp_path: Path) -> None:
    """The same text from the same runs, the title block aside (it is the benchmark's choice of words)."""
    report.write([e.directory for e in experiments], tmp_path)
    committed = (COMMITTED_REPORT / report.REPORT_MD).read_text()
    again = (tmp_path / report.REPORT_MD).read_text()
    assert again[again.index("\n## "):] == committed[committed.index("\n## "):]
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", committed):
        assert (COMMITTED_REPORT / image).exists() and (tmp_path / image).exists(), image
    for page in PAGES:
        assert (COMMITTED_REPORT / page).read_bytes().startswith(b"\x89PNG")


def test_the_pdf_holds_the_whole_table(experiments: list[Experiment]) -> None:
    if shutil.which("pdftotext") is None:
        apt_install(["poppler-utils"])
    text = subprocess.run(["pdftotext", "-layout", str(COMMITTED_REPORT / report.REPORT_PDF), "-"], check=True,
                          capture_output=True, text=True).stdout
    for pods in ASSIGNMENT_PODS:
        row = next((line for line in text.splitlines() if re.match(rf"\s*{pods}\s+\d", line)), None)
        assert row is not None, f"no row for {pods} pods in the PDF"
        assert len(re.findall(r"\(n=3\)", row)) == 2 * len(CLIENT_LOCATIONS), row  # users and time, both places
    assert "What bound each configuration" in text
    assert "Scaled to fit" in text
