"""Darknet cfg + weights -> ONNX, written with the ``onnx`` package's helper API (no deep-learning framework).

The graph stops at the YOLO heads' raw convolution outputs; ``darknet.head_rows`` decodes them in numpy, so every
engine's rows come out of the same arithmetic. Batch norm is folded into each convolution the way Darknet computes
it, ``(x - mean) / (sqrt(var) + 1e-6) * scale + bias``: the epsilon sits outside the square root.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import openvino as ov
from onnx import TensorProto, helper, numpy_helper

from clouddetect.config import Settings
from clouddetect.darknet import OPENCV_CLASS_SCORE_FLOOR, DarknetError, Section, WeightsReader, parse_cfg
from clouddetect.engines.openvino import OpenVinoEngine
from clouddetect.model_store import (
    CONVERT_HINT,
    ModelError,
    ModelFiles,
    install_atomically,
    locate_converted,
    locate_ir,
    record_sha256,
    sha256_of,
)

DARKNET_BN_EPSILON = 1e-6
LEAKY_SLOPE = 0.1
ONNX_OPSET = 13
INPUT_NAME = "image"
# The check before first use: seeded random inputs reach every weight; the engines agree within ~1e-5.
CHECK_SAMPLES = 3
CHECK_SEED = 416
CHECK_TOLERANCE = 1e-4  # on the rows: probabilities and box sides relative to the image
CHECK_RAW_TOLERANCE = 1e-3  # on the heads' raw values (logits up to ~20), relative to 1 + |value|


class _Graph:
    """Nodes and weights collected layer by layer; ``outputs[i]`` names layer i's tensor, ``channels[i]`` its depth."""

    def __init__(self, in_channels: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.outputs: list[str] = []
        self.channels: list[int] = []
        self.heads: list[tuple[str, int]] = []
        self.in_channels = in_channels

    def previous(self) -> tuple[str, int]:
        return (self.outputs[-1], self.channels[-1]) if self.outputs else (INPUT_NAME, self.in_channels)

    def constant(self, name: str, values: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def add(self, op: str, inputs: list[str], name: str, **attributes: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name


def _convolutional(graph: _Graph, index: int, section: Section, weights: WeightsReader) -> None:
    source, in_channels = graph.previous()
    filters, size, stride = section.int("filters"), section.int("size"), section.int("stride", 1)
    pad = size // 2 if section.int("pad", 0) else section.int("padding", 0)
    if section.int("groups", 1) != 1:
        raise DarknetError(f"layer {index}: grouped convolutions are not supported")
    if section.int("batch_normalize", 0):
        bias, scale, mean, var = (weights.take(filters) for _ in range(4))
        kernel = weights.take(filters * in_channels * size * size).reshape(filters, in_channels, size, size)
        factor = scale / (np.sqrt(var) + DARKNET_BN_EPSILON)
        kernel = kernel * factor[:, None, None, None]
        bias = bias - mean * factor
    else:
        bias = weights.take(filters)
        kernel = weights.take(filters * in_channels * size * size).reshape(filters, in_channels, size, size)
    name = f"conv_{index}"
    inputs = [source, graph.constant(f"{name}.weight", kernel.astype(np.float32)),
              graph.constant(f"{name}.bias", bias.astype(np.float32))]
    out = graph.add("Conv", inputs, name, kernel_shape=[size, size], strides=[stride, stride], pads=[pad] * 4)
    activation = section.options.get("activation", "linear")
    if activation == "leaky":
        out = graph.add("LeakyRelu", [out], f"leaky_{index}", alpha=LEAKY_SLOPE)
    elif activation != "linear":
        raise DarknetError(f"layer {index}: activation {activation!r} is not supported")
    graph.outputs.append(out)
    graph.channels.append(filters)


def _maxpool(graph: _Graph, index: int, section: Section) -> None:
    """Darknet pads ``size - 1`` in total, the odd pixel right and bottom: a size-2 stride-1 pool keeps the size."""
    source, channels = graph.previous()
    size, stride = section.int("size"), section.int("stride", 1)
    padding = section.int("padding", size - 1)
    begin, end = padding // 2, padding - padding // 2
    graph.outputs.append(graph.add("MaxPool", [source], f"maxpool_{index}", kernel_shape=[size, size],
                                   strides=[stride, stride], pads=[begin, begin, end, end]))
    graph.channels.append(channels)


def _upsample(graph: _Graph, index: int, section: Section) -> None:
    source, channels = graph.previous()
    factor = float(section.int("stride", 2))
    scales = graph.constant(f"upsample_{index}.scales", np.array([1.0, 1.0, factor, factor], dtype=np.float32))
    graph.outputs.append(graph.add("Resize", [source, "", scales], f"upsample_{index}", mode="nearest",
                                   coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
    graph.channels.append(channels)


def _route(graph: _Graph, index: int, section: Section) -> None:
    layers = [i if i >= 0 else index + i for i in section.ints("layers")]
    if len(layers) == 1:
        graph.outputs.append(graph.outputs[layers[0]])
    else:
        graph.outputs.append(graph.add("Concat", [graph.outputs[i] for i in layers], f"route_{index}", axis=1))
    graph.channels.append(sum(graph.channels[i] for i in layers))


def _yolo(graph: _Graph, index: int) -> None:
    """The head's raw tensor becomes a graph output under the name OpenCV gives the layer; decoding is numpy's."""
    source, channels = graph.previous()
    graph.heads.append((graph.add("Identity", [source], f"yolo_{index}"), channels))
    graph.outputs.append(source)
    graph.channels.append(channels)


def darknet_to_onnx(cfg: Path, weights_path: Path) -> onnx.ModelProto:
    sections = parse_cfg(cfg)
    net, layers = sections[0], sections[1:]
    side_h, side_w, channels = net.int("height"), net.int("width"), net.int("channels", 3)
    graph = _Graph(channels)
    weights = WeightsReader(weights_path)
    for index, section in enumerate(layers):
        if section.kind == "convolutional":
            _convolutional(graph, index, section, weights)
        elif section.kind == "maxpool":
            _maxpool(graph, index, section)
        elif section.kind == "upsample":
            _upsample(graph, index, section)
        elif section.kind == "route":
            _route(graph, index, section)
        elif section.kind == "yolo":
            _yolo(graph, index)
        else:
            raise DarknetError(f"layer {index}: [{section.kind}] is not supported")
    weights.finish()
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, channels, side_h, side_w])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, depth, None, None])
               for name, depth in graph.heads]
    onnx_graph = helper.make_graph(graph.nodes, cfg.stem, inputs, outputs, graph.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="clouddetect")
    onnx.checker.check_model(model)
    return model


def convert(files: ModelFiles) -> Path:
    """The ONNX graph, then OpenVINO's IR of it, beside the Darknet files; returns the IR's graph, what the openvino
    engine reads. Each is checked against OpenCV before it is renamed into place with its SHA-256 recorded; one
    already there that matches its record is kept."""
    return _convert_ir(files, _convert_onnx(files))


def _convert_onnx(files: ModelFiles) -> Path:
    try:
        return locate_converted(files.onnx, CONVERT_HINT)
    except ModelError:
        pass
    model = darknet_to_onnx(files.cfg, files.weights)
    digest = install_atomically(files.onnx, lambda out: out.write(model.SerializeToString()),
                                lambda partial: check_against_opencv(partial, files))
    record_sha256(files.onnx, digest)
    return files.onnx


def _convert_ir(files: ModelFiles, onnx_path: Path) -> Path:
    """The IR keeps the weights in f32 (OpenVINO's default would halve them to f16, and answers would move)."""
    try:
        return locate_ir(files)
    except ModelError:
        pass
    graph, weights = files.ir
    with tempfile.TemporaryDirectory(dir=graph.parent, prefix=".ir.") as folder:
        partial = Path(folder) / graph.name
        ov.save_model(ov.Core().read_model(onnx_path), partial, compress_to_fp16=False)
        check_against_opencv(partial, files)
        for made, target in ((partial.with_suffix(".bin"), weights), (partial, graph)):
            with made.open("rb") as stream:
                digest = sha256_of(stream)
            made.replace(target)
            record_sha256(target, digest)
    return graph


def check_against_opencv(model_path: Path, files: ModelFiles, samples: int = CHECK_SAMPLES) -> float:
    """A converted graph, ONNX or IR (on OpenVINO, f32 pinned), against OpenCV's own Darknet importer on seeded
    random inputs: the heads' raw outputs, which every weight reaches, and the decoded rows. Returns the largest
    difference of the rows; raises ``ModelError`` past either tolerance."""
    settings = Settings(engine="openvino", precision="f32")
    converted = OpenVinoEngine(files, settings, model_path)
    reference = cv2.dnn.readNetFromDarknet(str(files.cfg), str(files.weights))
    heads = [name for name in reference.getUnconnectedOutLayersNames() if name.startswith("yolo_")]
    # OpenCV names each layer by its Darknet index: a head's raw values are those of the convolution just before it.
    raw_names = [f"conv_{int(name.removeprefix('yolo_')) - 1}" for name in heads]
    rng = np.random.default_rng(CHECK_SEED)
    worst = worst_raw = 0.0
    for _ in range(samples):
        blob = rng.random((1, 3, settings.input_size_px, settings.input_size_px), dtype=np.float32)
        reference.setInput(blob)
        outputs = reference.forward(raw_names + heads)
        raw, rows = outputs[: len(heads)], np.concatenate(outputs[len(heads) :])
        for ours, theirs in zip(converted.heads(blob), raw, strict=True):
            worst_raw = max(worst_raw, float(np.max(np.abs(ours - theirs) / (1 + np.abs(theirs)))))
        worst = max(worst, rows_difference(converted.forward(blob), rows))
    if worst > CHECK_TOLERANCE or worst_raw > CHECK_RAW_TOLERANCE:
        raise ModelError(f"{model_path.name} differs from OpenCV's outputs: rows by {worst:.3g} (at most "
                         f"{CHECK_TOLERANCE}), raw head values by {worst_raw:.3g} (at most {CHECK_RAW_TOLERANCE})")
    return worst


def rows_difference(rows: np.ndarray, reference: np.ndarray) -> float:
    """The largest difference between two engines' rows, a class score zeroed on one side only at the floor
    counted as its distance from the floor."""
    if rows.shape != reference.shape:
        return float("inf")
    gap = np.abs(rows - reference)
    scores, reference_scores = rows[:, 5:], reference[:, 5:]
    one_zeroed = (scores == 0) != (reference_scores == 0)
    gap[:, 5:][one_zeroed] = np.maximum(scores + reference_scores - OPENCV_CLASS_SCORE_FLOOR, 0)[one_zeroed]
    return float(gap.max())
