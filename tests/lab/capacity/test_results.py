"""An experiment directory: conditions kept apart from what it ran on, runs written as they finish, resumed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from clouddetect.lab.capacity.results import Experiment, ExperimentError

RECORDED = Path(__file__).parents[1] / "recorded" / "one-pod"
CONDITIONS = {"timeout_s": 30.0, "hold_s": 60.0}
ENVIRONMENT = {"code": {"git_commit": "abc"}, "service": {"pod_cpu": "500m", "engine": None}}


def test_a_new_experiment_records_its_conditions_and_environment(tmp_path: Path) -> None:
    experiment = Experiment.open(tmp_path / "e", CONDITIONS, ENVIRONMENT)
    written = json.loads((tmp_path / "e" / "experiment.json").read_text())
    assert written == {**CONDITIONS, "environment": ENVIRONMENT}
    loaded = Experiment.load(experiment.directory)
    assert loaded.conditions == CONDITIONS and loaded.environment == ENVIRONMENT and loaded.runs == []


def test_runs_are_written_as_they_finish_and_read_back_whole(tmp_path: Path) -> None:
    [run] = Experiment.load(RECORDED).runs
    experiment = Experiment.open(tmp_path / "e", CONDITIONS, ENVIRONMENT)
    experiment.add(run)
    [again] = Experiment.load(experiment.directory).runs
    assert again == run
    [row] = csv.DictReader((tmp_path / "e" / "runs.csv").open())
    assert int(row["requests_sent"]) == run.requests_sent and float(row["saturation_rps"]) == run.saturation_rps
    assert json.loads(row["steps"])[0]["name"] == "search"


def test_resuming_keeps_the_first_environment_and_refuses_other_conditions(tmp_path: Path) -> None:
    Experiment.open(tmp_path / "e", CONDITIONS, ENVIRONMENT)
    resumed = Experiment.open(tmp_path / "e", CONDITIONS, {"code": {"git_commit": "later"}})
    assert resumed.environment == ENVIRONMENT
    with pytest.raises(ExperimentError, match="timeout_s: recorded 30.0, asked 5.0"):
        Experiment.open(tmp_path / "e", {**CONDITIONS, "timeout_s": 5.0}, ENVIRONMENT)


def test_runs_recorded_in_another_format_are_a_clear_error(tmp_path: Path) -> None:
    Experiment.open(tmp_path / "e", CONDITIONS, ENVIRONMENT)
    (tmp_path / "e" / "runs.json").write_text(json.dumps([{"pods": 1, "max_users": 3}]))
    with pytest.raises(ExperimentError, match="another format"):
        Experiment.load(tmp_path / "e")
