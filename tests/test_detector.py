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
from clouddetect.detector import Box, Detection, Detector
from clouddetect.model_store import ModelFiles

SAMPLE_SIZE = 8
CONFIDENCE_TOLERANCE = 1e-4
BOX_TOLERANCE_PX = 1


@pytest.fixture(scope="module")
def reference_net(model_files: ModelFiles) -> cv2.dnn.Net:
    return cv2.dnn.readNetFromDarknet(str(model_files.cfg), str(model_files.weights))


def reference(net: cv2.dnn.Net, labels: list[str], image: np.ndarray) -> list[Detection]:
    """The textbook pipeline: stretched 416x416 blob, class score > 0.5, NMS 0.4, boxes clipped to the image."""
    height, width = image.shape[:2]
    net.setInput(cv2.dnn.blobFromImage(image, 1 / 255.0, (416, 416), swapRB=True, crop=False))
    boxes, scores, classes = [], [], []
    for output in net.forward(net.getUnconnectedOutLayersNames()):
        for row in output:
            class_id = int(np.argmax(row[5:]))
            score = float(row[5 + class_id])
            if score > 0.5:
                cx, cy, w, h = row[0] * width, row[1] * height, row[2] * width, row[3] * height
                boxes.append([int(cx - w / 2), int(cy - h / 2), int(w), int(h)])
                scores.append(score)
                classes.append(class_id)
    found = []
    for i in np.array(cv2.dnn.NMSBoxes(boxes, scores, 0.5, 0.4)).flatten():
        left, top, w, h = boxes[i]
        right, bottom = min(width, left + w), min(height, top + h)
        left, top = max(0, left), max(0, top)
        found.append(Detection(labels[classes[i]], scores[i], Box(left, top, right - left, bottom - top)))
    return found


def same(a: Detection, b: Detection) -> bool:
    box_gap = max(abs(getattr(a.box, f) - getattr(b.box, f)) for f in ("left", "top", "width", "height"))
    close = abs(a.confidence - b.confidence) <= CONFIDENCE_TOLERANCE
    return a.label == b.label and close and box_gap <= BOX_TOLERANCE_PX


def assert_equal_detections(ours: list[Detection], theirs: list[Detection], image: Path) -> None:
    assert len(ours) == len(theirs), f"{image.name}: {ours} != {theirs}"
    unmatched = list(theirs)
    for detection in ours:
        match = next((t for t in unmatched if same(detection, t)), None)
        assert match is not None, f"{image.name}: {detection} has no counterpart in {unmatched}"
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
