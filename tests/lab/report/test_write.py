"""The report on a recorded experiment (one default run at 1 pod, a 0.5-CPU server, kept in ``recorded/``).

The figures are checked by the data their artists hold, read back from matplotlib, not by their files.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from clouddetect.lab.capacity.results import Experiment, RunRecord
from clouddetect.lab.report import analysis, plots
from clouddetect.lab.report import write as report

RECORDED = Path(__file__).parents[1] / "recorded" / "one-pod"


@pytest.fixture
def recorded() -> Experiment:
    return Experiment.load(RECORDED)


def copy_of(experiment: Experiment, directory: Path, runs: list[RunRecord], raw: bool = True) -> Experiment:
    """The recorded experiment with other runs, written where a report can read it."""
    shutil.copytree(experiment.directory, directory, ignore=None if raw else shutil.ignore_patterns("raw"))
    copy = Experiment.load(directory)
    (directory / "runs.json").unlink()
    for run in runs:
        copy.add(run)
    return Experiment.load(directory)


def series(drawn: plots.Drawn) -> dict[str, tuple[list[float], list[float]]]:
    return {s.label: (s.x, s.y) for s in drawn.series}


def test_the_recorded_run_judged_every_request_it_sent(recorded: Experiment) -> None:
    [run] = recorded.runs
    assert run.requests_sent == run.requests_judged == sum(s.requests_sent for s in run.steps)
    assert all(s.requests_sent == s.requests_judged for s in run.steps)
    assert run.max_users > 0 and run.saturation_rps and run.timeout_s == 30.0


def test_assignment_table_has_a_row_per_pod_count_and_both_client_locations(recorded: Experiment) -> None:
    [run] = recorded.runs
    table = report.assignment_table(analysis.gather([recorded]))
    assert table.header == ["pods", "max users (timeout 30 s) (master)", "mean response time (master)",
                            "max users (timeout 30 s) (remote)", "mean response time (remote)"]
    assert table.rows == [["1", f"{run.max_users} ± 0 (n=1)", f"{run.avg_ms:.0f} ± 0 ms (n=1)", "-", "-"],
                          ["2", "-", "-", "-", "-"], ["4", "-", "-", "-", "-"], ["8", "-", "-", "-", "-"]]
    assert "timeout (30 s)" in table.caption


def test_capacity_table_gives_the_services_figures(recorded: Experiment) -> None:
    [run] = recorded.runs
    table = report.capacity_table(analysis.gather([recorded]))
    row = dict(zip(table.header, table.rows[0], strict=True))
    assert row["pods"] == "1" and row["client"] == "master"
    assert row["p99 ms"] == f"{run.p99_ms:.0f} ± 0 (n=1)"
    assert row["saturation req/s"] == f"{run.saturation_rps:.1f} ± 0.0 (n=1)"
    assert row["scaling efficiency"] == "1.00"
    assert row["users within p95 ≤ 2 s"] == f"{run.slo_users} ± 0 (n=1)"


def test_scaling_efficiency_is_saturation_throughput_over_one_pods_times_the_pods(recorded: Experiment,
                                                                                  tmp_path: Path) -> None:
    [one] = recorded.runs
    assert one.saturation_rps is not None
    two = dataclasses.replace(one, pods=2, saturation_rps=one.saturation_rps * 1.8)
    experiment = copy_of(recorded, tmp_path / "experiment", [one, two], raw=False)
    table = report.capacity_table(analysis.gather([experiment]))
    assert [row[3] for row in table.rows] == ["1.00", "0.90"]


def test_figures_draw_the_recorded_figures(recorded: Experiment, tmp_path: Path) -> None:
    [run] = recorded.runs
    drawn = {d.path.name: d for d, _ in report.figures([recorded], tmp_path)}
    assert series(drawn["max_users_vs_pods.png"]) == {"client on master": ([1.0], [float(run.max_users)])}
    assert series(drawn["saturation_rps_vs_pods.png"])["client on master"] == ([1.0], [run.saturation_rps])
    curve = plots.load_curve(recorded.raw_path(run.key) / "search_stats_history.csv")
    assert len(curve) >= 3
    assert series(drawn["load_curves_master.png"]) == {
        "1 pods: response time": ([float(p.users) for p in curve], [p.avg_ms for p in curve]),
        "1 pods: requests/s": ([float(p.users) for p in curve], [p.rps for p in curve]),
    }
    assert all(d.path.exists() for d in drawn.values())


def test_a_figure_without_data_is_not_drawn(recorded: Experiment, tmp_path: Path) -> None:
    [run] = recorded.runs
    unsaturated = dataclasses.replace(run, saturation_rps=None)
    experiment = copy_of(recorded, tmp_path / "experiment", [unsaturated], raw=False)
    out = tmp_path / "report"
    names = {d.path.name for d, _ in report.figures([experiment], out)}
    assert names == {"max_users_vs_pods.png", "response_time_vs_pods.png"}
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    written = report.write([experiment.directory], out)
    assert "saturation_rps_vs_pods.png" not in (out / "report.md").read_text()
    assert {p.name for p in written if p.suffix == ".png"} == names


def test_report_lists_every_run_and_what_the_experiment_ran_on(recorded: Experiment, tmp_path: Path) -> None:
    [run] = recorded.runs
    report.write([recorded.directory], tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| master, 1 pods | repeat 1 |" in text
    assert f"| requests sent / judged | {run.requests_sent} / {run.requests_judged} |" in text
    assert "| one-pod | code.git_commit |" in text
    assert f"| one-pod | service.pod_cpu | {recorded.environment['service']['pod_cpu']} |" in text
    assert "0.75 x throughput x timeout" in text
    assert "<table>" in (tmp_path / "report.html").read_text()
