"""An experiment directory: its conditions, one record per finished run (JSON and a tidy CSV), and raw Locust files.

Every run is written as soon as it finishes, so an interrupted experiment keeps what it measured and resumes:
``lab run --out DIR`` on the same directory skips the runs already recorded. Runs measured under other conditions
(timeout, hold time, ...) cannot be mixed into one directory. ``experiment.json`` also records what the experiment
ran on (``environment``: code version, pods, engine, the client's network), as found when it was created.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONDITIONS_FILE = "experiment.json"
RUNS_JSON = "runs.json"
RUNS_CSV = "runs.csv"
RAW_DIR = "raw"
ENVIRONMENT_KEY = "environment"


class ExperimentError(RuntimeError):
    """The directory holds another experiment, or no experiment at all."""


@dataclass(frozen=True)
class StepRecord:
    """One load step of a run, as the search saw it."""

    name: str
    users: int
    passed: bool
    first_failure_users: int | None
    held_s: float | None
    stable: bool | None
    p95_ms: float | None
    requests_sent: int
    requests_judged: int
    # Failed requests of the hold and their kinds (of the whole step if it never held, the burst's included);
    # failed requests of the jump's burst, which did not count. None in a step recorded before they were kept.
    failures: int | None = None
    failure_kinds: dict[str, int] | None = None
    burst_failures: int | None = None


@dataclass(frozen=True)
class RunRecord:
    """One repeat of one configuration: its capacity and the figures of the load it was confirmed at.

    ``requests_sent`` / ``requests_judged`` add up every step of the run; they are equal when no request was left
    unanswered. ``saturation_rps`` is the throughput more users no longer raise: that of the held capacity, which
    is well past saturation (``search_saturation_rps``: the search's first estimate, from its ramp);
    ``slo_users`` the most users held with a p95 response time within ``slo_p95_s``.
    """

    client_location: str
    pods: int
    repeat: int
    endpoint: str
    pod_names: list[str]
    started_at: str
    finished_at: str
    breaking_users: int | None
    breaking_failure_kinds: dict[str, int]
    confirmed_users_tried: list[int]
    max_users: int
    avg_ms: float | None
    median_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    rps: float | None
    requests: int
    failures: int
    failure_kinds: dict[str, int]
    pod_requests: dict[str, int]
    timeout_s: float
    hold_s: float
    spawn_rate: float
    confirm_spawn_rate: float
    wait_s: float
    held_s: float | None
    stable: bool | None
    window_ms: list[float | None]
    saturation_rps: float | None
    search_saturation_rps: float | None
    slo_p95_s: float | None
    slo_users: int | None
    slo_p95_ms: float | None
    requests_sent: int
    requests_judged: int
    duration_s: float
    steps: list[StepRecord]
    # Over the accepted load's hold (``evidence.evidence``): each pod's CPU, throttling and memory against its
    # limits, the load generator's CPU and link; None for a run recorded before these were measured.
    evidence: dict[str, Any] | None = None
    pod_nodes: dict[str, str | None] = field(default_factory=dict)
    client_bound: bool | None = None
    machine_bound: bool | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return run_key(self.client_location, self.pods, self.repeat)


def _run(fields_: dict[str, Any]) -> RunRecord:
    return RunRecord(**{**fields_, "steps": [StepRecord(**step) for step in fields_["steps"]]})


def run_key(client_location: str, pods: int, repeat: int) -> tuple[str, int, int]:
    return client_location, pods, repeat


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


class Experiment:
    def __init__(self, directory: Path, conditions: dict[str, Any], runs: list[RunRecord],
                 environment: dict[str, Any] | None = None):
        self.directory = directory
        self.conditions = conditions
        self.runs = runs
        self.environment = environment or {}

    @classmethod
    def open(cls, directory: Path, conditions: dict[str, Any], environment: dict[str, Any]) -> Experiment:
        """The experiment in ``directory``, created if new; refused if it was measured under other conditions."""
        conditions_file = directory / CONDITIONS_FILE
        if conditions_file.exists():
            recorded = json.loads(conditions_file.read_text())
            differing = {k: (recorded.get(k), v) for k, v in conditions.items() if recorded.get(k) != v}
            if differing:
                described = ", ".join(f"{k}: recorded {old!r}, asked {new!r}" for k, (old, new) in differing.items())
                raise ExperimentError(f"{directory} holds an experiment under other conditions ({described}); "
                                      "use another directory")
            return cls.load(directory)
        (directory / RAW_DIR).mkdir(parents=True, exist_ok=True)
        _write_atomically(conditions_file, json.dumps({**conditions, ENVIRONMENT_KEY: environment}, indent=2) + "\n")
        return cls(directory, conditions, [], environment)

    @classmethod
    def load(cls, directory: Path) -> Experiment:
        conditions_file = directory / CONDITIONS_FILE
        if not conditions_file.exists():
            raise ExperimentError(f"{directory} holds no experiment ({CONDITIONS_FILE} is missing)")
        runs_file = directory / RUNS_JSON
        try:
            runs = [_run(r) for r in json.loads(runs_file.read_text())] if runs_file.exists() else []
        except (TypeError, KeyError) as exc:
            raise ExperimentError(f"{runs_file} has runs in another format ({exc}); measure again") from None
        conditions = json.loads(conditions_file.read_text())
        environment = conditions.pop(ENVIRONMENT_KEY, {})
        return cls(directory, conditions, runs, environment)

    def done(self, key: tuple[str, int, int]) -> bool:
        return any(r.key == key for r in self.runs)

    def raw_path(self, key: tuple[str, int, int]) -> Path:
        """Where a run's Locust files are: one file set per step (search, confirm-1, ...)."""
        location, pods, repeat = key
        return self.directory / RAW_DIR / f"{location}-pods-{pods}-repeat-{repeat}"

    def raw_dir(self, key: tuple[str, int, int]) -> Path:
        path = self.raw_path(key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def note_placement(self, placement: dict[str, dict[str, Any]]) -> None:
        """Records where pods ran: each node's CPU model and instruction sets, and the engines its pods ran."""
        nodes = self.environment.setdefault("nodes", {})
        for where in placement.values():
            node = nodes.setdefault(where["node"] or "unknown", {"cpu_model": None, "isa": None, "engines": []})
            node["cpu_model"] = node["cpu_model"] or where["cpu_model"]
            node["isa"] = node["isa"] or where["isa"]
            if where["engine"] and where["engine"] not in node["engines"]:
                node["engines"].append(where["engine"])
        recorded = json.loads((self.directory / CONDITIONS_FILE).read_text())
        _write_atomically(self.directory / CONDITIONS_FILE,
                          json.dumps({**recorded, ENVIRONMENT_KEY: self.environment}, indent=2) + "\n")

    def add(self, record: RunRecord) -> None:
        self.runs = sorted([r for r in self.runs if r.key != record.key] + [record], key=lambda r: r.key)
        _write_atomically(self.directory / RUNS_JSON, json.dumps([asdict(r) for r in self.runs], indent=2) + "\n")
        _write_atomically(self.directory / RUNS_CSV, self._csv())

    def _csv(self) -> str:
        columns = [f.name for f in fields(RunRecord)]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for run in self.runs:
            values = asdict(run)
            writer.writerow([_csv_value(values[c]) for c in columns])
        return buffer.getvalue()
