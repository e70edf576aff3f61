"""The expected duration printed before an experiment: what each phase of a run needs at a given throughput."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from clouddetect.lab.capacity.experiment import STEP_OVERHEAD_S, expected_run_s, experiment_conditions
from clouddetect.lab.capacity.results import Experiment, ExperimentError
from clouddetect.lab.capacity.search import SearchSettings
from clouddetect.loadtest.settings import LoadSettings

SEARCH = SearchSettings(spawn_rate=2.0, confirm_spawn_rate=1.0, hold_s=60.0, max_users=3000, step_down_pct=10.0,
                        start_fraction=0.6, slo_p95_s=0.0)
LOAD = LoadSettings(timeout_s=30.0, images=Path("."), image_order="sequence", locust_processes=0,
                    progress_interval_s=5.0, jump_spawn_rate=20.0, probe_window_s=5.0)


def test_one_pod_run_is_the_sum_of_its_phases() -> None:
    # 5 req/s: capacity 0.75 x 5 x 30 = 112.5 users, jump level 0.6 x 5 x 30 = 90, answers take 22.5 s.
    search_s = 2 * 5.0 + 90 / 20 + 22.5 / 2 + 30 + 22.5 + 2 * 30 / 5  # the last: backlog of users added meanwhile
    confirm_s = (112.5 - 11.25) / 20 + 11.25 / 1 + 60 + 22.5  # quickly to one 10 % step below, then 1 user/s
    assert expected_run_s(1, SEARCH, LOAD, 5.0) == pytest.approx(search_s + confirm_s + 2 * STEP_OVERHEAD_S)


def test_more_pods_take_longer_and_the_jump_saves_ramping() -> None:
    durations = [expected_run_s(pods, SEARCH, LOAD, 5.0) for pods in (1, 2, 4, 8)]
    assert durations == sorted(durations)
    no_jump = dataclasses.replace(SEARCH, start_fraction=0.0)
    assert expected_run_s(8, no_jump, LOAD, 5.0) > durations[-1]


def test_a_latency_objective_adds_its_step() -> None:
    with_slo = dataclasses.replace(SEARCH, slo_p95_s=2.0, slo_hold_s=20.0)
    added = expected_run_s(1, with_slo, LOAD, 5.0) - expected_run_s(1, SEARCH, LOAD, 5.0)
    assert added == pytest.approx(10 / 2.0 + 20.0 + 2.0 + STEP_OVERHEAD_S)


def test_an_experiment_recorded_with_the_defaults_resumes_with_them(tmp_path: Path) -> None:
    recorded = shutil.copytree(Path(__file__).parents[1] / "recorded" / "one-pod", tmp_path / "one-pod")
    conditions = experiment_conditions("url", SearchSettings(), LoadSettings(images=Path(".")), 128, None)
    resumed = Experiment.open(recorded, conditions, {})
    assert len(resumed.runs) == 1


def test_an_experiment_under_other_conditions_is_not_resumed(tmp_path: Path) -> None:
    recorded = shutil.copytree(Path(__file__).parents[1] / "recorded" / "one-pod", tmp_path / "one-pod")
    conditions = experiment_conditions("url", SearchSettings(hold_s=30.0), LoadSettings(images=Path(".")), 128, None)
    with pytest.raises(ExperimentError, match="hold_s: recorded 60.0, asked 30.0"):
        Experiment.open(recorded, conditions, {})
