"""The engines behind one Detector: openvino/f32 gives OpenCV's answers, precision is pinned, and a precision the
CPU does not run natively is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import openvino as ov
import pytest

from clouddetect.codec import decode_image
from clouddetect.config import Settings
from clouddetect.detector import Detection, Detector
from clouddetect.engines import EngineError
from clouddetect.engines.openvino import cpu_capabilities, require_native
from clouddetect.model_store import ModelError, ModelFiles, locate

SAMPLE_SIZE = 8
CONFIDENCE_TOLERANCE = 1e-4


def assert_same_answers(ours: list[Detection], reference: list[Detection], image: Path) -> None:
    """Same labels and boxes, confidence within 1e-4; order may differ only between near-equal scores."""
    key = lambda d: (d.label, d.box.left, d.box.top, d.box.width, d.box.height)  # noqa: E731
    ours, reference = sorted(ours, key=key), sorted(reference, key=key)
    assert [key(d) for d in ours] == [key(d) for d in reference], image.name
    for a, b in zip(ours, reference, strict=True):
        assert abs(a.confidence - b.confidence) <= CONFIDENCE_TOLERANCE, f"{image.name}: {a} vs {b}"


def compare(openvino_detector: Detector, detector: Detector, images: list[Path]) -> int:
    total = 0
    for path in images:
        image = decode_image(path.read_bytes())
        answer = openvino_detector.detect(image)
        assert_same_answers(answer, detector.detect(image), path)
        total += len(answer)
    return total


def test_openvino_f32_answers_as_opencv_on_a_sample(openvino_detector, detector, images) -> None:
    assert compare(openvino_detector, detector, images[:SAMPLE_SIZE]) > 0


@pytest.mark.slow
def test_openvino_f32_answers_as_opencv_on_all_images(openvino_detector, detector, images) -> None:
    assert compare(openvino_detector, detector, images) > len(images)


def test_each_engine_says_what_runs(openvino_detector, detector) -> None:
    assert (detector.engine.engine, detector.engine.precision) == ("opencv", "f32")
    assert (openvino_detector.engine.engine, openvino_detector.engine.precision) == ("openvino", "f32")
    assert "FP32" in openvino_detector.engine.cpu_features
    assert openvino_detector.engine.kernels and all(k.endswith("_f32") for k in openvino_detector.engine.kernels)


def test_precision_is_pinned_even_where_openvino_would_pick_bf16(openvino_detector) -> None:
    """On a CPU with BF16, OpenVINO's own default is bf16; the engine's kernels stay f32 all the same."""
    if "BF16" in cpu_capabilities():
        assert ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.bf16
    assert all(k.endswith("_f32") for k in openvino_detector.engine.kernels)


def test_bf16_runs_bf16_kernels_where_the_cpu_has_them(model_files, settings: Settings, converted_model) -> None:
    if "BF16" not in cpu_capabilities():
        pytest.skip("this CPU does not run bf16 natively")
    bf16 = Detector(model_files, dataclasses.replace(settings, engine="openvino", precision="bf16"))
    assert bf16.engine.kernels and all(k.endswith("_bf16") for k in bf16.engine.kernels)


def test_a_precision_the_cpu_lacks_is_refused_saying_what_to_use() -> None:
    with pytest.raises(EngineError, match="does not run BF16 natively.*CLOUDDETECT_PRECISION=f32"):
        require_native("bf16", ("FP32", "INT8"))
    require_native("f32")  # every x86-64 CPU OpenVINO supports runs f32


def test_openvino_without_the_converted_model_says_how_to_make_it(tmp_path, model_files: ModelFiles,
                                                                   settings: Settings) -> None:
    for source in (model_files.cfg, model_files.weights, model_files.names):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    with pytest.raises(ModelError, match="clouddetect model convert"):
        Detector(locate(tmp_path), dataclasses.replace(settings, engine="openvino"))
