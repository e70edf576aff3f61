"""YOLOv3-tiny behind one interface, whichever engine runs the forward pass. Knows nothing of HTTP.

The pipeline is Darknet's: the image stretched to a square input, BGR to RGB, scaled by 1/255; the engine's YOLO
rows, then boxes above the confidence threshold and non-maximum suppression, here for every engine. No engine may
run two forwards at once, so the forward pass is serialised by a lock; post-processing runs outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from clouddetect.config import Settings
from clouddetect.engines import EngineInfo, create_engine
from clouddetect.model_store import ModelFiles

_WARM_UP_SIDE_PX = 64
# How much each image moves the learned service time: a few images follow a change of load.
SERVICE_TIME_WEIGHT = 0.2


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class Detection:
    label: str
    confidence: float
    box: Box


@dataclass(frozen=True)
class PreparedImage:
    """An image already resized to the network input: what waits for the forward pass, in 0.5 MB not 36."""

    pixels: np.ndarray
    width: int
    height: int


class Detector:
    """Loads the network once, on the engine the settings name; ``detect`` may be called from many threads."""

    def __init__(self, files: ModelFiles, settings: Settings) -> None:
        cv2.setNumThreads(settings.inference_threads)
        self.settings = settings
        self.labels = files.labels()
        self._engine = create_engine(files, settings)
        self._forward_lock = threading.Lock()
        self._warm = threading.Event()
        self.service_s: float | None = None  # seconds the net is held per image here, under this load and quota

    @property
    def engine(self) -> EngineInfo:
        return self._engine.info

    @property
    def ready(self) -> bool:
        return self._warm.is_set()

    def warm_up(self) -> None:
        """One inference, so the engine's lazy allocations happen before the first client is served."""
        self.detect(np.zeros((_WARM_UP_SIDE_PX, _WARM_UP_SIDE_PX, 3), dtype=np.uint8))
        self._warm.set()

    def prepare(self, image: np.ndarray) -> PreparedImage:
        side = self.settings.input_size_px
        pixels = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
        return PreparedImage(pixels=pixels, width=image.shape[1], height=image.shape[0])

    def detect(self, image: np.ndarray) -> list[Detection]:
        return self.infer(self.prepare(image))[0]

    def infer(self, prepared: PreparedImage,
              before_forward: Callable[[], None] | None = None) -> tuple[list[Detection], float]:
        """The detections and the seconds the net was held for them (waiting for it not included).

        ``before_forward`` runs once the net is free, just before the work starts: an exception it raises (the
        caller no longer wants the answer) abandons the request without running it.
        """
        side = self.settings.input_size_px
        with self._forward_lock:
            if before_forward is not None:
                before_forward()
            started = time.perf_counter()
            # The float blob (2 MB) is made only once the net is free: waiting requests hold 0.5 MB each, not 2.5.
            blob = cv2.dnn.blobFromImage(prepared.pixels, 1 / 255.0, (side, side), swapRB=True, crop=False)
            rows = self._engine.forward(blob)
            held_s = time.perf_counter() - started
            self._learn(held_s)
        return decode_rows(rows, prepared.width, prepared.height, self.labels, self.settings), held_s

    def _learn(self, held_s: float) -> None:
        """The service time admission plans with: a moving average, so it follows the load and the CPU quota."""
        previous = self.service_s
        self.service_s = held_s if previous is None else previous + SERVICE_TIME_WEIGHT * (held_s - previous)


def decode_rows(
    rows: np.ndarray, width: int, height: int, labels: list[str], settings: Settings
) -> list[Detection]:
    """Detections from YOLO rows ``[cx, cy, w, h, objectness, class scores...]`` relative to the image.

    Suppression is class-agnostic, as in OpenCV's YOLO samples that clients compare against: one object, one label.
    It decides on those samples' integer boxes, so the same boxes survive; the reported edges are the float box's,
    clipped to the image and each rounded to the nearest pixel.
    """
    scores = rows[:, 5:]
    class_ids = scores.argmax(axis=1)
    confidences = scores[np.arange(len(rows)), class_ids]
    keep = confidences > settings.confidence_threshold
    rows, class_ids, confidences = rows[keep], class_ids[keep], confidences[keep]
    centres_sizes = (rows[:, :4] * np.array([width, height, width, height], dtype=np.float32)).tolist()
    sample_boxes = [[int(cx - w / 2), int(cy - h / 2), int(w), int(h)] for cx, cy, w, h in centres_sizes]
    kept = cv2.dnn.NMSBoxes(sample_boxes, confidences.tolist(), settings.confidence_threshold, settings.nms_threshold)
    return [
        Detection(
            label=labels[int(class_ids[i])],
            confidence=float(confidences[i]),
            box=rounded_box(*centres_sizes[i], width, height),
        )
        for i in np.asarray(kept, dtype=int).reshape(-1)
    ]


def rounded_box(cx: float, cy: float, w: float, h: float, width: int, height: int) -> Box:
    """Each edge of the float box clipped to the image and rounded on its own, so no edge drifts by more than 0.5 px."""
    left = round(min(max(cx - w / 2, 0.0), width))
    top = round(min(max(cy - h / 2, 0.0), height))
    right = round(min(max(cx + w / 2, 0.0), width))
    bottom = round(min(max(cy + h / 2, 0.0), height))
    return Box(left=left, top=top, width=right - left, height=bottom - top)
