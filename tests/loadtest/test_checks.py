"""How the load test judges answers: real answers of the real app, and those answers spoiled one way at a time."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from clouddetect.loadtest.checks import INVALID_JSON, MALFORMED, TIMEOUT, WRONG_ID, failure_kind
from clouddetect.verdicts import ENDPOINT
from support import request_body

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
