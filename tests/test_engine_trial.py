"""engine=auto: the exact engines installed are timed as the worker starts and the fastest that fits is kept,
with the timings to show why; an engine that cannot run or does not fit is left out, saying so."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from clouddetect.config import Settings
from clouddetect.detector import Detector
from clouddetect.engines import EngineError, EngineInfo, engine_label, trial
from clouddetect.model_store import ModelFiles, locate


def test_auto_keeps_the_fastest_exact_engine_and_shows_the_timings(model_files: ModelFiles, settings: Settings,
                                                                  converted_model: Path) -> None:
    chosen = Detector(model_files, dataclasses.replace(settings, engine="auto")).engine
    assert chosen.choice.startswith("auto: fastest of the exact engines")
    assert {t.engine.split()[0] for t in chosen.trials} == {"openvino/f32", "opencv/f32"}
    kept = [t for t in chosen.trials if t.verdict == "kept"]
    assert [t.engine for t in kept] == [engine_label(chosen)]
    fitting = [t for t in chosen.trials if t.verdict in ("kept", "slower")]
    assert kept[0].cpu_ms_per_forward == min(t.cpu_ms_per_forward for t in fitting) > 0
    assert all(t.footprint_mib is not None for t in chosen.trials)
    assert chosen.precision == "f32", "bf16 moves answers: auto never takes it"


def test_auto_runs_opencv_where_openvino_has_no_converted_model(tmp_path: Path, model_files: ModelFiles,
                                                               settings: Settings) -> None:
    for source in (model_files.cfg, model_files.weights, model_files.names):
        shutil.copy(source, tmp_path / source.name)
    chosen = Detector(locate(tmp_path), dataclasses.replace(settings, engine="auto")).engine
    assert chosen.engine == "opencv"
    openvino = next(t for t in chosen.trials if t.engine == "openvino")
    assert openvino.verdict.startswith("unavailable:") and "clouddetect model convert" in openvino.verdict
    assert openvino.cpu_ms_per_forward is None


def test_auto_refuses_to_start_when_no_engine_fits_the_memory(model_files: ModelFiles, settings: Settings,
                                                              converted_model: Path) -> None:
    tiny = dataclasses.replace(settings, engine="auto", engine_memory_fraction=0.001)
    with pytest.raises(EngineError, match="no engine fits: opencv/f32 .* over the memory budget; openvino/f32 over"):
        Detector(model_files, tiny)


def test_a_set_engine_is_not_timed(model_files: ModelFiles, settings: Settings) -> None:
    chosen = Detector(model_files, dataclasses.replace(settings, engine="opencv")).engine
    assert (chosen.choice, chosen.trials) == ("set", ())


class Burner:
    """An engine whose forward pass burns a set CPU time: the trial's bookkeeping on engines of known speed."""

    def __init__(self, name: str, cpu_s: float) -> None:
        self.info = EngineInfo(engine=name, precision="f32", cpu_features=())
        self.cpu_s = cpu_s

    def forward(self, blob: np.ndarray) -> np.ndarray:
        started = time.process_time()
        while time.process_time() - started < self.cpu_s:
            pass
        return blob


def test_a_faster_engine_timed_first_is_made_again_and_kept(monkeypatch, model_files: ModelFiles,
                                                           settings: Settings) -> None:
    made: list[str] = []

    def maker(name: str, cpu_s: float):  # noqa: ANN202 - the candidate's factory
        return lambda: made.append(name) or Burner(name, cpu_s)

    monkeypatch.setattr(trial, "candidates", lambda *_: [("fast", maker("fast", 0.002)), ("slow", maker("slow", 0.02))])
    kept = trial.choose(model_files, dataclasses.replace(settings, engine="auto"))
    assert kept.info.engine == "fast" and made == ["fast", "slow", "fast"]
    assert [(t.engine, t.verdict) for t in kept.info.trials] == [("fast/f32", "kept"), ("slow/f32", "slower")]
