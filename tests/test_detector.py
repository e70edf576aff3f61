"""The detector against a straightforward OpenCV YOLOv3-tiny pipeline written here, on the real test images."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from clouddetect.codec import decode_image
from clouddetect.config import Settings
from clouddetect.detector import Detection, Detector, decode_rows, rounded_box
from clouddetect.engines.opencv import winograd_enabled
from clouddetect.model_store import ModelFiles

SAMPLE_SIZE = 8
WINOGRAD_SAMPLE_SIZE = 3
MIB = 1024 * 1024
CONFIDENCE_TOLERANCE = 1e-4
EDGE_TOLERANCE_PX = 0.5 + 1e-3


@dataclasses.dataclass(frozen=True)
class FloatDetection:
    label: str
    confidence: float
    edges: tuple[float, float, float, float]  # left, top, right, bottom, clipped to the image


@pytest.fixture(scope="module")
def reference_net(model_files: ModelFiles) -> cv2.dnn.Net:
    return cv2.dnn.readNetFromDarknet(str(model_files.cfg), str(model_files.weights))


def reference(net: cv2.dnn.Net, labels: list[str], image: np.ndarray) -> list[FloatDetection]:
    """The textbook pipeline (stretched 416x416 blob, class score > 0.5, NMS 0.4 on its integer boxes), with each
    kept box's exact float edges clipped to the image."""
    height, width = image.shape[:2]
    net.setInput(cv2.dnn.blobFromImage(image, 1 / 255.0, (416, 416), swapRB=True, crop=False))
    boxes, edges, scores, classes = [], [], [], []
    for output in net.forward(net.getUnconnectedOutLayersNames()):
        for row in output:
            class_id = int(np.argmax(row[5:]))
            score = float(row[5 + class_id])
            if score > 0.5:
                cx, cy, w, h = row[0] * width, row[1] * height, row[2] * width, row[3] * height
                boxes.append([int(cx - w / 2), int(cy - h / 2), int(w), int(h)])
                edges.append((np.clip(cx - w / 2, 0, width), np.clip(cy - h / 2, 0, height),
                              np.clip(cx + w / 2, 0, width), np.clip(cy + h / 2, 0, height)))
                scores.append(score)
                classes.append(class_id)
    return [
        FloatDetection(labels[classes[i]], scores[i], tuple(float(e) for e in edges[i]))
        for i in np.array(cv2.dnn.NMSBoxes(boxes, scores, 0.5, 0.4)).flatten()
    ]


def same(ours: Detection, theirs: FloatDetection) -> bool:
    box = ours.box
    edges = (box.left, box.top, box.left + box.width, box.top + box.height)
    edge_gap = max(abs(a - b) for a, b in zip(edges, theirs.edges, strict=True))
    close = abs(ours.confidence - theirs.confidence) <= CONFIDENCE_TOLERANCE
    return ours.label == theirs.label and close and edge_gap <= EDGE_TOLERANCE_PX


def assert_equal_detections(ours: list[Detection], theirs: list[FloatDetection], image: Path) -> None:
    assert len(ours) == len(theirs), f"{image.name}: {ours} != {theirs}"
    unmatched = list(theirs)
    for detection in ours:
        match = next((t for t in unmatched if same(detection, t)), None)
        assert match is not None, f"{image.name}: {detection} has no counterpart within 0.5 px in {unmatched}"
        unmatched.remove(match)


def check_images(detector: Detector, net: cv2.dnn.Net, images: list[Path]) -> int:
    total = 0
    for path in images:
        image = decode_image(path.read_bytes())
        ours = detector.detect(image)
        assert_equal_detections(ours, reference(net, detector.labels, image), path)
        total += len(ours)
    return total


def test_matches_plain_opencv_on_a_sample(detector, reference_net, images) -> None:
    assert check_images(detector, reference_net, images[:SAMPLE_SIZE]) > 0


@pytest.mark.slow
def test_matches_plain_opencv_on_all_images(detector, reference_net, images) -> None:
    assert check_images(detector, reference_net, images) > len(images)


@pytest.mark.parametrize("winograd", ["on", "off"])
def test_matches_plain_opencv_with_winograd_on_and_off(model_files, settings, reference_net, images, winograd) -> None:
    chosen = Detector(model_files, dataclasses.replace(settings, engine="opencv", winograd=winograd))
    assert chosen.engine.winograd is (winograd == "on")
    assert check_images(chosen, reference_net, images[:WINOGRAD_SAMPLE_SIZE]) > 0


def test_winograd_auto_turns_on_from_the_memory_threshold(settings: Settings, caplog) -> None:
    auto = dataclasses.replace(settings, winograd="auto", winograd_min_memory_bytes=640 * MIB)
    with caplog.at_level("INFO", logger="clouddetect.engines.opencv"):
        assert not winograd_enabled(auto, memory_limit=512 * MIB)  # the default pod
    assert "Winograd off (auto): memory limit 512 MiB, on from 640 MiB" in caplog.text
    assert not winograd_enabled(auto, memory_limit=640 * MIB - 1)
    assert winograd_enabled(auto, memory_limit=640 * MIB)
    assert winograd_enabled(auto, memory_limit=24 * 1024 * MIB)


def test_winograd_on_or_off_ignores_the_memory(settings: Settings) -> None:
    assert winograd_enabled(dataclasses.replace(settings, winograd="on"), memory_limit=256 * MIB)
    assert not winograd_enabled(dataclasses.replace(settings, winograd="off"), memory_limit=64 * 1024 * MIB)


def test_boxes_lie_inside_the_image(detector, images) -> None:
    for path in images[:SAMPLE_SIZE]:
        image = decode_image(path.read_bytes())
        for d in detector.detect(image):
            assert d.box.left >= 0 and d.box.left + d.box.width <= image.shape[1]
            assert d.box.top >= 0 and d.box.top + d.box.height <= image.shape[0]
            assert 0.5 < d.confidence <= 1 and d.label in detector.labels


def test_confidence_threshold_is_a_setting(model_files, settings: Settings, images) -> None:
    strict = Detector(model_files, dataclasses.replace(settings, confidence_threshold=0.9))
    loose = Detector(model_files, dataclasses.replace(settings, confidence_threshold=0.2))
    image = decode_image(images[1].read_bytes())
    strict_found, loose_found = strict.detect(image), loose.detect(image)
    assert all(d.confidence > 0.9 for d in strict_found)
    assert len(loose_found) > len(strict_found)


def test_concurrent_detections_equal_sequential_ones(detector, images) -> None:
    decoded = [decode_image(p.read_bytes()) for p in images[:SAMPLE_SIZE]]
    sequential = [detector.detect(image) for image in decoded]
    with ThreadPoolExecutor(max_workers=SAMPLE_SIZE) as pool:
        concurrent = list(pool.map(detector.detect, decoded))
    assert concurrent == sequential


def test_ready_only_after_warm_up(model_files, settings: Settings) -> None:
    fresh = Detector(model_files, settings)
    assert not fresh.ready
    fresh.warm_up()
    assert fresh.ready


def yolo_row(cx: float, cy: float, w: float, h: float, class_id: int, score: float) -> list[float]:
    row = [cx, cy, w, h, score] + [0.0] * 80
    row[5 + class_id] = score
    return row


def test_overlapping_boxes_of_different_classes_keep_the_stronger_only(settings: Settings) -> None:
    car, truck = 2, 7
    rows = np.array([yolo_row(0.5, 0.5, 0.4, 0.4, car, 0.9), yolo_row(0.51, 0.5, 0.4, 0.4, truck, 0.8)], np.float32)
    labels = [f"class{i}" for i in range(80)]
    found = decode_rows(rows, 100, 100, labels, settings)
    assert [d.label for d in found] == ["class2"]


def test_distant_boxes_are_both_kept(settings: Settings) -> None:
    rows = np.array([yolo_row(0.2, 0.2, 0.1, 0.1, 0, 0.9), yolo_row(0.8, 0.8, 0.1, 0.1, 0, 0.8)], np.float32)
    assert len(decode_rows(rows, 100, 100, [f"class{i}" for i in range(80)], settings)) == 2


def test_box_edges_are_rounded_not_truncated() -> None:
    # A 13.0 px wide box from 20.6 to 33.6: truncation gave left 20, width 13 (right edge 33, 0.6 px short).
    box = rounded_box(cx=27.1, cy=50.0, w=13.0, h=10.0, width=100, height=100)
    assert (box.left, box.left + box.width) == (21, 34)
    assert (box.top, box.height) == (45, 10)


def test_box_edges_are_clipped_to_the_image() -> None:
    box = rounded_box(cx=95.0, cy=2.0, w=20.0, h=10.0, width=100, height=80)
    assert (box.left, box.top, box.width, box.height) == (85, 0, 15, 7)
