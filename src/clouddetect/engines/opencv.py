"""OpenCV's DNN module on the Darknet files: the reference engine, and the default."""

from __future__ import annotations

import cv2
import numpy as np

from clouddetect.config import Settings
from clouddetect.engines import EngineInfo
from clouddetect.model_store import ModelFiles


def cpu_features() -> tuple[str, ...]:
    """The instruction sets OpenCV was built for and found on this CPU (its line marks absent ones with '?')."""
    return tuple(f.lstrip("*") for f in cv2.getCPUFeaturesLine().split() if not f.startswith("?"))


class OpenCvEngine:
    def __init__(self, files: ModelFiles, settings: Settings) -> None:
        self._net = cv2.dnn.readNetFromDarknet(str(files.cfg), str(files.weights))
        self._net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self._net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self._net.enableWinograd(settings.winograd)
        self._outputs = self._net.getUnconnectedOutLayersNames()
        self.info = EngineInfo(engine="opencv", precision="f32", cpu_features=cpu_features())

    def forward(self, blob: np.ndarray) -> np.ndarray:
        self._net.setInput(blob)
        return np.concatenate([o.reshape(-1, o.shape[-1]) for o in self._net.forward(self._outputs)])
