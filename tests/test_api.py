"""The HTTP contract through Flask's test client, with the real detector behind it."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from clouddetect import machine
from clouddetect.admission import GONE_ENVIRON_KEY
from clouddetect.api import create_app
from clouddetect.codec import decode_image
from clouddetect.config import Settings
from clouddetect.detector import Detector, PreparedImage
from clouddetect.engines.opencv import winograd_enabled
from clouddetect.openapi import document
from clouddetect.request_json import response_body
from clouddetect.verdicts import ENDPOINT, response_problem
from support import request_body

README = Path(__file__).resolve().parents[1] / "README.md"
KNOWN_IMAGE = "000000012807.jpg"
# What the service finds in KNOWN_IMAGE: (label, accuracy, [left, top, width, height]).
KNOWN_OBJECTS = [
    ("person", 0.953, [297, 225, 140, 255]),
    ("elephant", 0.918, [0, 212, 220, 224]),
    ("horse", 0.692, [385, 233, 97, 166]),
]
ACCURACY_SHOWN_TO = 5e-4  # README and the pinned answer show accuracies to three decimals


def post(client: FlaskClient, payload: object, **kwargs):
    return client.post(ENDPOINT, data=json.dumps(payload), content_type="application/json", **kwargs)


def assert_error(response, status: int, code: str, request_id: str | None = None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code
    assert body["error"]["message"] and "Traceback" not in response.get_data(as_text=True)
    assert body.get("id") == request_id


def test_detection_answer_keeps_the_contract(client, images) -> None:
    payload = request_body(images[1], "3f6c2a1e-0000-4000-8000-000000000001")
    response = post(client, payload)
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert response_problem(body, payload["id"]) is None
    assert body["objects"], "this image shows a person, an elephant and a horse"
    first = body["objects"][0]
    assert set(first) == {"label", "accuracy", "rectangle"}
    assert isinstance(first["accuracy"], float) and isinstance(first["rectangle"]["left"], int)


def known_objects(body: dict) -> list[tuple[str, float, list[int]]]:
    return [
        (o["label"], o["accuracy"], [o["rectangle"][k] for k in ("left", "top", "width", "height")])
        for o in body["objects"]
    ]


def assert_known_answer(body: dict) -> None:
    found = known_objects(body)
    assert [(label, box) for label, _, box in found] == [(label, box) for label, _, box in KNOWN_OBJECTS]
    for (_, accuracy, _), (_, expected, _) in zip(found, KNOWN_OBJECTS, strict=True):
        assert abs(accuracy - expected) <= ACCURACY_SHOWN_TO


def test_known_image_gives_person_elephant_and_horse(client, images) -> None:
    (path,) = [p for p in images if p.name == KNOWN_IMAGE]
    assert_known_answer(post(client, request_body(path)).get_json())


def test_readme_and_the_openapi_document_show_the_known_answer() -> None:
    example = re.search(r"```json\n(\{\"id\".*?)```", README.read_text(), re.S)
    assert example, "README shows an answer"
    assert_known_answer(json.loads(example.group(1).replace("…", "")))
    responses = document()["paths"][ENDPOINT]["post"]["responses"]
    assert_known_answer(responses["200"]["content"]["application/json"]["examples"]["found"]["value"])


def test_answer_is_the_detectors_finding(client, detector, images) -> None:
    payload = request_body(images[2])
    expected = response_body(payload["id"], detector.detect(decode_image(images[2].read_bytes())))
    assert post(client, payload).get_json() == json.loads(json.dumps(expected))


def test_object_sent_as_a_json_string_gets_the_same_answer(client, images) -> None:
    """``requests.post(url, json=json.dumps(data))`` encodes the request twice: the body is a JSON string."""
    payload = request_body(images[1], "encoded-twice")
    twice = post(client, json.dumps(payload))
    assert twice.status_code == 200 and twice.is_json
    assert twice.get_json() == post(client, payload).get_json()


@pytest.mark.parametrize("inner", ["not json", "[1, 2]", '"{}"', "3"])
def test_json_string_that_is_not_an_object_inside_is_400(client, inner) -> None:
    response = post(client, inner)
    assert_error(response, 400, "invalid_field")
    assert response.get_json()["error"]["message"] == post(client, [1]).get_json()["error"]["message"]


def test_data_url_prefix_is_accepted(client, images) -> None:
    payload = request_body(images[0])
    payload["image"] = "data:image/jpeg;base64," + payload["image"]
    assert post(client, payload).status_code == 200


def test_png_with_nothing_in_it_gives_empty_objects(client) -> None:
    ok, png = cv2.imencode(".png", np.full((120, 160, 3), 255, dtype=np.uint8))
    response = post(client, {"id": "blank", "image": base64.b64encode(png.tobytes()).decode()})
    assert response.status_code == 200
    assert response.get_json() == {"id": "blank", "objects": []}


def test_gif_is_accepted(client, images) -> None:
    gif = io.BytesIO()
    Image.open(images[1]).save(gif, format="GIF")
    response = post(client, {"id": "gif", "image": base64.b64encode(gif.getvalue()).decode()})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["objects"]


def test_malformed_json_is_400(client) -> None:
    assert_error(client.post(ENDPOINT, data="{not json", content_type="application/json"), 400, "malformed_json")


@pytest.mark.parametrize("payload", [[1, 2], "text", None, 42])
def test_body_that_is_not_an_object_is_400(client, payload) -> None:
    assert_error(post(client, payload), 400, "invalid_field")


@pytest.mark.parametrize("payload", [{"image": "YWJj"}, {"id": 7, "image": "YWJj"}, {"id": None, "image": "YWJj"}])
def test_missing_or_non_string_id_is_400(client, payload) -> None:
    assert_error(post(client, payload), 400, "invalid_field")


@pytest.mark.parametrize("payload", [{"id": "r1"}, {"id": "r1", "image": 12}, {"id": "r1", "image": {"b64": "x"}}])
def test_missing_or_non_string_image_is_400_with_the_id(client, payload) -> None:
    assert_error(post(client, payload), 400, "invalid_field", "r1")


def test_bad_base64_is_400(client) -> None:
    assert_error(post(client, {"id": "r2", "image": "this is not base64!"}), 400, "invalid_base64", "r2")


def test_bytes_that_are_not_an_image_are_400(client) -> None:
    text = base64.b64encode(b"just some text").decode()
    assert_error(post(client, {"id": "r3", "image": text}), 400, "not_an_image", "r3")


def test_truncated_image_is_400(client, images) -> None:
    data = images[3].read_bytes()
    truncated = base64.b64encode(data[: len(data) // 2]).decode()
    assert_error(post(client, {"id": "r4", "image": truncated}), 400, "not_an_image", "r4")


@pytest.mark.parametrize("encode", [lambda p: p, json.dumps], ids=["object", "encoded-twice"])
def test_oversized_body_is_413(settings, detector, images, encode) -> None:
    small = create_app(dataclasses.replace(settings, max_body_bytes=10_000), detector).test_client()
    assert_error(post(small, encode(request_body(images[0]))), 413, "body_too_large")


def test_wrong_method_is_405(client) -> None:
    response = client.get(ENDPOINT)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_wrong_content_type_is_415(client, images) -> None:
    response = client.post(ENDPOINT, data=json.dumps(request_body(images[0])), content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")


def test_unknown_path_is_json_404(client) -> None:
    assert_error(client.get("/no/such/page"), 404, "not_found")


def test_service_answers_after_bad_requests(client, images) -> None:
    post(client, {"id": "x", "image": "%%%"})
    client.post(ENDPOINT, data=b"\xff\xfe", content_type="application/json")
    assert post(client, request_body(images[0])).status_code == 200


def test_healthz_is_alive(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json()["status"] == "alive"


def test_not_ready_until_warmed_up(settings, model_files, images) -> None:
    cold = Detector(model_files, settings)
    client = create_app(settings, cold).test_client()
    assert client.get("/readyz").status_code == 503
    refused = post(client, request_body(images[0], "early"))
    assert_error(refused, 503, "not_ready")
    assert refused.headers["Retry-After"] == str(settings.retry_after_s)
    cold.warm_up()
    assert client.get("/readyz").status_code == 200
    assert post(client, request_body(images[0])).status_code == 200


def test_bodies_waiting_past_max_waiting_body_bytes_are_503(settings, detector, images) -> None:
    payload = json.dumps(request_body(images[0], "late"))
    bound = dataclasses.replace(settings, max_body_bytes=len(payload), max_waiting_body_bytes=len(payload) + 10)
    app = create_app(bound, detector)
    with app.extensions["clouddetect"].admission.slot(len(payload)):  # another request's body already waits
        refused = app.test_client().post(ENDPOINT, data=payload, content_type="application/json")
    assert_error(refused, 503, "overloaded")
    assert "1 requests" in refused.get_json()["error"]["message"]
    assert app.test_client().post(ENDPOINT, data=payload, content_type="application/json").status_code == 200


def test_readyz_says_which_engine_runs(client, settings: Settings) -> None:
    body = client.get("/readyz").get_json()
    assert (body["engine"], body["precision"]) == ("opencv", "f32") and body["cpu_features"]
    assert body["winograd"] is winograd_enabled(settings)
    # The CPU it runs on, as /proc/cpuinfo says.
    assert body["cpu"] == machine.cpu() and body["cpu"]["isa"]


def test_metrics_count_requests_by_status_and_time_them(client, images) -> None:
    post(client, request_body(images[0]))
    post(client, {"id": "bad", "image": "%%%"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'clouddetect_requests_total{status="200"} 1.0' in text
    assert 'clouddetect_requests_total{status="400"} 1.0' in text
    assert "clouddetect_request_duration_seconds_count 2.0" in text
    assert "clouddetect_inference_duration_seconds_count 1.0" in text
    assert "clouddetect_requests_in_flight 0.0" in text


class BrokenDetector:
    """A ready detector whose inference fails: what a fault inside OpenCV looks like to the API."""

    ready = True
    service_s = None

    def __init__(self, real: Detector) -> None:
        self.prepare = real.prepare

    def infer(self, prepared: PreparedImage, before_forward: object = None) -> tuple[list, float]:
        raise RuntimeError("forward pass failed")


def test_server_fault_is_a_json_500_logged_and_counted(settings, detector, images, caplog) -> None:
    client = create_app(settings, BrokenDetector(detector)).test_client()
    with caplog.at_level(logging.INFO, logger="clouddetect.api"):
        response = post(client, request_body(images[0], "fault-1"))
    assert_error(response, 500, "internal_error", "fault-1")
    assert "forward pass failed" not in response.get_data(as_text=True)
    failure = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert failure.getMessage() == f"unexpected error serving POST {ENDPOINT}"
    assert "RuntimeError: forward pass failed" in caplog.text
    assert "request id=fault-1 status=500 objects=0" in caplog.text and "error=internal_error" in caplog.text
    assert 'clouddetect_requests_total{status="500"} 1.0' in client.get("/metrics").get_data(as_text=True)
    assert client.get("/healthz").status_code == 200


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: what a decompression bomb shows before decoding."""
    png = bytearray(cv2.imencode(".png", np.zeros((1, 1, 3), dtype=np.uint8))[1].tobytes())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def test_image_with_too_many_pixels_is_413_before_decoding(client) -> None:
    bomb = base64.b64encode(png_claiming(40_000, 40_000)).decode()
    response = post(client, {"id": "bomb", "image": bomb})
    assert_error(response, 413, "image_too_large", "bomb")
    assert "40000x40000" in response.get_json()["error"]["message"]


def test_pixel_limit_is_a_setting(settings, detector, images) -> None:
    small = create_app(dataclasses.replace(settings, max_image_pixels=10_000), detector).test_client()
    assert_error(post(small, request_body(images[0], "big")), 413, "image_too_large", "big")


def test_deeply_nested_json_is_400(client) -> None:
    response = client.post(ENDPOINT, data="[" * 100_000, content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_options_is_not_counted_as_a_detection(client) -> None:
    assert client.options(ENDPOINT).status_code == 200
    assert 'clouddetect_requests_total{status="200"}' not in client.get("/metrics").get_data(as_text=True)


# ---- work only for clients that still wait


def _post_while_inference_is_busy(client: FlaskClient, detector: Detector, image: Path, hold_s: float,
                                  **kwargs: object) -> tuple[object, list]:
    """A request sent while the detector's net is held (by the test), which lets go after ``hold_s``."""
    answers: list = []
    with detector._forward_lock:  # noqa: SLF001 - the test plays a long forward pass of other requests
        sender = threading.Thread(target=lambda: answers.append(client.post(ENDPOINT, json=request_body(image),
                                                                            **kwargs)))
        sender.start()
        time.sleep(hold_s)
    sender.join(timeout=60)
    return answers[0], answers


def test_a_request_whose_deadline_passes_while_it_waits_is_never_run(client: FlaskClient, detector: Detector,
                                                                     images: list[Path]) -> None:
    before = detector.service_s
    allowed_s = 3 * (before or 0.1)  # admitted: one service time fits in it, as the first in line
    answer, _ = _post_while_inference_is_busy(client, detector, images[0], allowed_s + 0.3,
                                              headers={"X-Request-Timeout": f"{allowed_s:.3f}"})
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "deadline_exceeded"
    assert detector.service_s == before  # no forward pass was run for it
    assert 'clouddetect_dropped_total{reason="deadline_exceeded"} 1.0' in client.get("/metrics").get_data(True)


def test_a_request_whose_client_left_while_it_waited_is_dropped(client: FlaskClient, detector: Detector,
                                                                images: list[Path]) -> None:
    gone = threading.Event()
    gone.set()  # the server's bridge sets it when the connection closes
    answer, _ = _post_while_inference_is_busy(client, detector, images[0], 0.2,
                                              environ_base={GONE_ENVIRON_KEY: gone})
    assert answer.status_code == 499 and answer.get_json()["error"]["code"] == "client_closed_request"
    assert 'clouddetect_dropped_total{reason="client_closed_request"} 1.0' in client.get("/metrics").get_data(True)


def test_a_request_with_time_to_spare_is_answered(client: FlaskClient, images: list[Path]) -> None:
    answer = client.post(ENDPOINT, json=request_body(images[0]), headers={"X-Request-Timeout": "30"})
    assert answer.status_code == 200
