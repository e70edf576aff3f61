"""Inference engines: each turns a network-sized blob into YOLO rows ``[cx, cy, w, h, objectness, scores...]``.

Everything before (resizing, the blob) and after (thresholds, suppression, box rounding) is the ``Detector``'s,
shared by all engines, so their answers cannot drift apart. ``opencv`` runs the Darknet files with OpenCV's DNN
module; ``openvino`` runs the ONNX graph converted from them (``clouddetect model convert``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clouddetect.config import Settings
from clouddetect.model_store import CONVERT_HINT, ModelFiles, locate_converted

OPENVINO_MISSING = "the openvino engine needs the {package} package: pip install 'clouddetect[openvino]'"


class EngineError(Exception):
    """The chosen engine cannot run here: not installed, or a precision this CPU does not run natively."""


@dataclass(frozen=True)
class EngineInfo:
    """What runs the forward pass, as the log and ``/readyz`` report it."""

    engine: str
    precision: str
    cpu_features: tuple[str, ...]
    # The convolution kernels actually compiled (instruction set and arithmetic), where the engine tells them.
    kernels: tuple[str, ...] = ()
    winograd: bool = False  # OpenCV's Winograd convolutions run (opencv engine only)


class Engine(Protocol):
    info: EngineInfo

    def forward(self, blob: np.ndarray) -> np.ndarray:
        """YOLO rows for one ``(1, 3, side, side)`` blob; callers serialise calls."""
        ...


def create_engine(files: ModelFiles, settings: Settings) -> Engine:
    if settings.engine == "openvino":
        return _openvino_module().OpenVinoEngine(files, settings, locate_converted(files.onnx, CONVERT_HINT))
    from clouddetect.engines.opencv import OpenCvEngine

    return OpenCvEngine(files, settings)


def check_engine(files: ModelFiles, settings: Settings) -> None:
    """What would stop the chosen engine in every worker, found without importing it: importing OpenVINO starts
    threads, and a process that forks workers must have none. The precision is checked as each worker starts."""
    if settings.engine == "openvino":
        if importlib.util.find_spec("openvino") is None:
            raise EngineError(OPENVINO_MISSING.format(package="openvino"))
        locate_converted(files.onnx, CONVERT_HINT)


def _openvino_module():  # noqa: ANN202 - the module, imported only when chosen
    try:
        from clouddetect.engines import openvino
    except ImportError as exc:
        raise EngineError(OPENVINO_MISSING.format(package=exc.name)) from None
    return openvino
