"""Darknet's model format and its YOLO layer's arithmetic, in numpy: what an engine other than OpenCV's Darknet
importer needs to give the same answers.

The cfg is a list of ``[section]`` blocks of ``key=value`` lines; the weights file is a short header followed by
each convolution's float32 parameters in layer order. A YOLO head turns a convolution's raw output into rows
``[cx, cy, w, h, objectness, class scores...]`` relative to the image, exactly as OpenCV's region layer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clouddetect.model_store import ModelError

# OpenCV's Darknet importer zeroes class scores at or below this, whatever threshold the caller asks for later.
OPENCV_CLASS_SCORE_FLOOR = 0.2


class DarknetError(ModelError):
    """The cfg or weights hold something this reader does not support or does not expect."""


@dataclass(frozen=True)
class Section:
    kind: str
    options: dict[str, str]

    def int(self, key: str, default: int | None = None) -> int:
        if key not in self.options and default is not None:
            return default
        return int(self.options[key])

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]


@dataclass(frozen=True)
class YoloHead:
    """One ``[yolo]`` layer: the anchors it uses (pixels at network size) and the class count."""

    anchors: tuple[tuple[int, int], ...]
    classes: int


def parse_cfg(path: Path) -> list[Section]:
    sections: list[Section] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append(Section(line.strip("[]").strip(), {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetError(f"{path}: cannot read line {raw!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError(f"{path}: the first section must be [net]")
    return sections


def yolo_heads(sections: list[Section]) -> list[YoloHead]:
    heads = []
    for section in sections:
        if section.kind == "yolo":
            pairs = section.ints("anchors")
            anchors = [(pairs[2 * i], pairs[2 * i + 1]) for i in range(len(pairs) // 2)]
            heads.append(YoloHead(tuple(anchors[m] for m in section.ints("mask")), section.int("classes")))
    return heads


class WeightsReader:
    """Hands out the weights file's float32 values in order; the header's layout depends on its version."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        major, minor, _revision = np.frombuffer(data, dtype="<i4", count=3)
        seen_bytes = 8 if major * 10 + minor >= 2 else 4
        self._values = np.frombuffer(data, dtype="<f4", offset=12 + seen_bytes)
        self._position = 0
        self._path = path

    def take(self, count: int) -> np.ndarray:
        if self._position + count > len(self._values):
            raise DarknetError(f"{self._path} ends before the cfg's layers do")
        values = self._values[self._position : self._position + count]
        self._position += count
        return values

    def finish(self) -> None:
        if self._position != len(self._values):
            raise DarknetError(f"{self._path} holds {len(self._values) - self._position} values the cfg does not use")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def head_rows(output: np.ndarray, head: YoloHead, input_size_px: int) -> np.ndarray:
    """A head's raw ``(1, anchors x (5 + classes), rows, cols)`` output as YOLO rows, ordered cell by cell and
    anchor by anchor within a cell, as OpenCV orders them."""
    count = len(head.anchors)
    _, _, rows, cols = output.shape
    t = output.reshape(count, 5 + head.classes, rows, cols).transpose(2, 3, 0, 1).astype(np.float32)
    anchors = np.array(head.anchors, dtype=np.float32)
    out = np.empty_like(t)
    out[..., 0] = (sigmoid(t[..., 0]) + np.arange(cols, dtype=np.float32)[None, :, None]) / cols
    out[..., 1] = (sigmoid(t[..., 1]) + np.arange(rows, dtype=np.float32)[:, None, None]) / rows
    out[..., 2] = np.exp(t[..., 2]) * anchors[:, 0] / input_size_px
    out[..., 3] = np.exp(t[..., 3]) * anchors[:, 1] / input_size_px
    out[..., 4] = sigmoid(t[..., 4])
    scores = out[..., 4:5] * sigmoid(t[..., 5:])
    out[..., 5:] = np.where(scores > OPENCV_CLASS_SCORE_FLOOR, scores, 0.0)
    return out.reshape(-1, 5 + head.classes)
