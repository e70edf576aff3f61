"""The Darknet -> ONNX converter: checked against OpenCV, installed atomically, refused when tampered with."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clouddetect.darknet import DarknetError
from clouddetect.darknet_onnx import CHECK_TOLERANCE, check_against_opencv, convert, darknet_to_onnx
from clouddetect.model_store import (
    ModelError,
    ModelFiles,
    locate,
    locate_converted,
    locate_ir,
    record_path,
    sha256_of,
)


@pytest.fixture
def model_copy(tmp_path: Path, model_files: ModelFiles) -> ModelFiles:
    """The verified Darknet files in a folder of the test's own, without any converted file."""
    for source in (model_files.cfg, model_files.weights, model_files.names):
        shutil.copy(source, tmp_path / source.name)
    return locate(tmp_path)


def test_converted_graph_gives_opencvs_rows(converted_model: Path, model_files: ModelFiles) -> None:
    assert check_against_opencv(converted_model, model_files) <= CHECK_TOLERANCE


def test_conversion_is_installed_with_its_sha256_recorded(model_copy: ModelFiles) -> None:
    path = convert(model_copy)
    recorded = record_path(path).read_text().split()
    with path.open("rb") as stream:
        assert recorded == [sha256_of(stream), path.name]
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == [], "no partial file left"
    modified = path.stat().st_mtime_ns
    assert convert(model_copy) == path and path.stat().st_mtime_ns == modified, "an intact conversion is kept"


def test_tampered_conversion_is_refused_then_replaced(model_copy: ModelFiles) -> None:
    path = convert(model_copy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the SHA-256 recorded"):
        locate_converted(path, "convert it")
    convert(model_copy)
    assert locate_converted(path, "convert it") == path


def test_the_ir_keeps_f32_weights_and_a_tampered_weights_file_is_refused(model_copy: ModelFiles) -> None:
    graph = convert(model_copy)
    assert (graph, model_copy.onnx.is_file()) == (model_copy.ir[0], True), "the IR is made from the checked ONNX"
    weights = model_copy.ir[1]
    assert weights.stat().st_size > 0.99 * model_copy.weights.stat().st_size, "f32, not halved to f16"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=f"{weights.name} does not match the SHA-256 recorded"):
        locate_ir(model_copy)
    assert convert(model_copy) == graph and locate_ir(model_copy) == graph


def test_a_graph_of_other_weights_fails_the_check(tmp_path: Path, model_files: ModelFiles) -> None:
    weights = tmp_path / "other.weights"
    values = np.fromfile(model_files.weights, dtype=np.uint8)
    values[-4000:] = 0  # the last convolution's weights: the heads' outputs must move
    values.tofile(weights)
    other = tmp_path / "other.onnx"
    other.write_bytes(darknet_to_onnx(model_files.cfg, weights).SerializeToString())
    with pytest.raises(ModelError, match="differs from OpenCV's outputs"):
        check_against_opencv(other, model_files, samples=1)


def test_unsupported_layer_is_named(tmp_path: Path, model_files: ModelFiles) -> None:
    cfg = tmp_path / "other.cfg"
    cfg.write_text(model_files.cfg.read_text() + "\n[shortcut]\nfrom=-3\n")
    with pytest.raises(DarknetError, match=r"\[shortcut\] is not supported"):
        darknet_to_onnx(cfg, model_files.weights)


def test_weights_shorter_than_the_cfg_are_refused(tmp_path: Path, model_files: ModelFiles) -> None:
    weights = tmp_path / "short.weights"
    weights.write_bytes(model_files.weights.read_bytes()[:1_000_000])
    with pytest.raises(DarknetError, match="ends before"):
        darknet_to_onnx(model_files.cfg, weights)
