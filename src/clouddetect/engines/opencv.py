"""OpenCV's DNN module on the Darknet files: the reference engine, which every other must match."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from clouddetect.cgroup_limits import memory_limit_bytes
from clouddetect.config import Settings
from clouddetect.engines import EngineInfo
from clouddetect.model_store import ModelFiles

log = logging.getLogger("clouddetect.engines.opencv")
MIB = 1024 * 1024


def cpu_features() -> tuple[str, ...]:
    """The instruction sets OpenCV was built for and found on this CPU (its line marks absent ones with '?')."""
    return tuple(f.lstrip("*") for f in cv2.getCPUFeaturesLine().split() if not f.startswith("?"))


def winograd_enabled(settings: Settings, memory_limit: int | None = None) -> bool:
    """Winograd as set; auto turns it on only where its higher peak memory fits the limit this process lives under
    (``memory_limit``, read from the cgroup when not given). Logs the choice once, as the engine starts."""
    if settings.winograd != "auto":
        log.info("Winograd %s (set)", settings.winograd)
        return settings.winograd == "on"
    limit = memory_limit_bytes() if memory_limit is None else memory_limit
    enabled = limit >= settings.winograd_min_memory_bytes
    log.info("Winograd %s (auto): memory limit %d MiB, on from %d MiB", "on" if enabled else "off", limit // MIB,
             settings.winograd_min_memory_bytes // MIB)
    return enabled


class OpenCvEngine:
    def __init__(self, files: ModelFiles, settings: Settings) -> None:
        self._net = cv2.dnn.readNetFromDarknet(str(files.cfg), str(files.weights))
        self._net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self._net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        winograd = winograd_enabled(settings)
        self._net.enableWinograd(winograd)
        self._outputs = self._net.getUnconnectedOutLayersNames()
        self.info = EngineInfo(engine="opencv", precision="f32", cpu_features=cpu_features(), winograd=winograd)

    def forward(self, blob: np.ndarray) -> np.ndarray:
        self._net.setInput(blob)
        return np.concatenate([o.reshape(-1, o.shape[-1]) for o in self._net.forward(self._outputs)])
