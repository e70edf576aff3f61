"""One judge for every client: real answers of the real app, those answers spoiled one way at a time, and the
judge importable without OpenCV or numpy (clients and load generators import it alone)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from clouddetect.verdicts import (
    ENDPOINT,
    INVALID_JSON,
    MALFORMED,
    TIMEOUT,
    WRONG_ID,
    describe_kinds,
    failure_kind,
    response_problem,
)
from support import request_body

GOOD = {"id": "a", "objects": [{"label": "cat", "accuracy": 0.78,
                               "rectangle": {"height": 114, "left": 380, "top": 363, "width": 254}}]}

# Importing a blocked module raises ImportError: None in sys.modules is Python's way to forbid one.
IMPORT_WITHOUT_OPENCV = """
import sys
sys.modules["cv2"] = None
sys.modules["numpy"] = None
import clouddetect.verdicts, clouddetect.client, clouddetect.loadtest.settings
print(clouddetect.verdicts.response_problem({"id": "a", "objects": []}, "a"))
"""


def test_clients_judge_answers_without_opencv_or_numpy() -> None:
    done = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_OPENCV], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


def test_the_block_works() -> None:
    blocked = IMPORT_WITHOUT_OPENCV.replace("import clouddetect.verdicts,", "import clouddetect.request_json,")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "import of cv2 halted" in done.stderr


def test_good_answer_has_no_problem() -> None:
    assert response_problem(GOOD, "a") is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"id": "b", "objects": []},
        {"id": "a"},
        {"id": "a", "objects": None},
        {"id": "a", "objects": [{"label": "cat", "accuracy": "0.7", "rectangle": GOOD["objects"][0]["rectangle"]}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 1.5, "rectangle": GOOD["objects"][0]["rectangle"]}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 0.5, "rectangle": {"height": 1, "left": 1, "top": 1}}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 0.5,
                                 "rectangle": {"height": 1.5, "left": 1, "top": 1, "width": 2}}]},
    ],
)
def test_broken_answers_are_named(body) -> None:
    assert response_problem(body, "a")


TIMEOUT_S = 30.0


@pytest.fixture
def answer(client: FlaskClient, images: list[Path]) -> tuple[str, dict]:
    """A real answer with objects in it, and the id it was asked with."""
    for image in images:
        request_id = str(uuid.uuid4())
        body = client.post(ENDPOINT, json=request_body(image, request_id)).get_json()
        if body["objects"]:
            return request_id, body
    raise AssertionError("no test image has a detected object")


def test_a_timely_answer_that_keeps_the_contract_is_no_failure(answer: tuple[str, dict]) -> None:
    request_id, body = answer
    assert failure_kind(200, json.dumps(body), request_id, 0.2, TIMEOUT_S) is None


def test_another_status_is_a_failure_named_by_it(answer: tuple[str, dict]) -> None:
    request_id, body = answer
    assert failure_kind(503, json.dumps(body), request_id, 0.2, TIMEOUT_S) == "HTTP 503"


def test_an_answer_slower_than_the_timeout_fails(answer: tuple[str, dict]) -> None:
    request_id, body = answer
    assert failure_kind(200, json.dumps(body), request_id, TIMEOUT_S + 0.1, TIMEOUT_S) == TIMEOUT


def test_no_answer_in_time_is_a_timeout_and_other_errors_are_named() -> None:
    assert failure_kind(0, None, "x", 1.0, TIMEOUT_S, error=TimeoutError("timed out")) == TIMEOUT
    kind = failure_kind(0, None, "x", 0.0, TIMEOUT_S, error=ConnectionResetError("reset"))
    assert kind == "connection error: ConnectionResetError"


def test_a_body_that_is_not_json_fails(answer: tuple[str, dict]) -> None:
    request_id, body = answer
    assert failure_kind(200, json.dumps(body)[:-1], request_id, 0.2, TIMEOUT_S) == INVALID_JSON


def test_another_requests_id_fails(answer: tuple[str, dict]) -> None:
    _, body = answer
    assert failure_kind(200, json.dumps(body), str(uuid.uuid4()), 0.2, TIMEOUT_S) == WRONG_ID


@pytest.mark.parametrize("spoil", [
    lambda body: body.pop("objects"),
    lambda body: body.update(objects="none"),
    lambda body: body["objects"][0].pop("rectangle"),
    lambda body: body["objects"][0].update(accuracy=1.5),
])
def test_missing_or_malformed_objects_fail(answer: tuple[str, dict], spoil: Callable[[dict], object]) -> None:
    request_id, body = answer
    spoil(body)
    assert failure_kind(200, json.dumps(body), request_id, 0.2, TIMEOUT_S) == MALFORMED


def test_a_timeout_behind_the_clients_retries_is_still_a_timeout() -> None:
    from geventhttpclient.useragent import RetriesExceeded  # the error Locust's FastHttpUser meets

    error = RetriesExceeded("http://127.0.0.1:1/", 1, original=TimeoutError("timed out"))
    assert failure_kind(0, None, "x", 0.1, TIMEOUT_S, error=error) == TIMEOUT


def test_kinds_are_described_most_frequent_first() -> None:
    assert describe_kinds({"HTTP 503": 1, TIMEOUT: 3}) == "3 × timeout; 1 × HTTP 503"
    assert describe_kinds({}) == "no failure"
