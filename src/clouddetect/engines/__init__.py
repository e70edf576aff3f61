"""Inference engines: each turns a network-sized blob into YOLO rows ``[cx, cy, w, h, objectness, scores...]``.

Everything before (resizing, the blob) and after (thresholds, suppression, box rounding) is the ``Detector``'s,
shared by all engines, so their answers cannot drift apart. ``opencv`` runs the Darknet files with OpenCV's DNN
module; ``openvino`` runs the graph converted from them (``clouddetect model convert``); ``auto``, the default,
times both where the service runs and keeps the faster whose memory fits (``engines.trial``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clouddetect.config import Settings
from clouddetect.model_store import ModelFiles, locate_ir

OPENVINO_MISSING = "the openvino engine needs the {package} package: pip install 'clouddetect[openvino]'"


class EngineError(Exception):
    """The chosen engine cannot run here: not installed, or a precision this CPU does not run natively."""


@dataclass(frozen=True)
class Trial:
    """One engine timed by ``engine=auto`` as the worker started, and what became of it."""

    engine: str  # as ``engine_label`` names it
    cpu_ms_per_forward: float | None  # None: it could not run here
    footprint_mib: float | None  # resident memory it added, loaded and run
    verdict: str  # kept, slower, over the memory budget, or unavailable: why


@dataclass(frozen=True)
class EngineInfo:
    """What runs the forward pass and why, as the log and ``/readyz`` report it."""

    engine: str
    precision: str
    cpu_features: tuple[str, ...]
    # The convolution kernels actually compiled (instruction set and arithmetic), where the engine tells them.
    kernels: tuple[str, ...] = ()
    winograd: bool = False  # OpenCV's Winograd convolutions run (opencv engine only)
    choice: str = "set"  # how it was chosen: "set" by the engine setting, or auto's rule
    trials: tuple[Trial, ...] = ()  # auto's timings, the kept engine's among them


def engine_label(info: EngineInfo) -> str:
    """An engine's name, precision and, for OpenCV, Winograd: "opencv/f32 Winograd off", "openvino/f32"."""
    label = f"{info.engine}/{info.precision}"
    return f"{label} Winograd {'on' if info.winograd else 'off'}" if info.engine == "opencv" else label


class Engine(Protocol):
    info: EngineInfo

    def forward(self, blob: np.ndarray) -> np.ndarray:
        """YOLO rows for one ``(1, 3, side, side)`` blob; callers serialise calls."""
        ...


def create_engine(files: ModelFiles, settings: Settings) -> Engine:
    if settings.engine == "auto":
        from clouddetect.engines.trial import choose

        return choose(files, settings)
    if settings.engine == "openvino":
        return _openvino_module().OpenVinoEngine(files, settings, locate_ir(files))
    from clouddetect.engines.opencv import OpenCvEngine

    return OpenCvEngine(files, settings)


def check_engine(files: ModelFiles, settings: Settings) -> None:
    """What would stop the chosen engine in every worker, found without importing it: importing OpenVINO starts
    threads, and a process that forks workers must have none. The precision is checked as each worker starts."""
    if settings.engine == "openvino":
        if importlib.util.find_spec("openvino") is None:
            raise EngineError(OPENVINO_MISSING.format(package="openvino"))
        locate_ir(files)


def _openvino_module():  # noqa: ANN202 - the module, imported only when chosen
    try:
        from clouddetect.engines import openvino
    except ImportError as exc:
        raise EngineError(OPENVINO_MISSING.format(package=exc.name)) from None
    return openvino
