"""Clients that encode the request twice, as ``requests.post(url, json=json.dumps(data))`` does, over real HTTP.

The body is then a JSON string holding the object's JSON text; the service decodes it once more and answers as it
answers the plain object.
"""

from __future__ import annotations

import base64
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from clouddetect.verdicts import ENDPOINT
from support import LiveServer

pytestmark = pytest.mark.slow
THREADS = 8
REQUEST_TIMEOUT_S = 120


def request_data(path: Path) -> dict[str, str]:
    """What such a client builds per image: the base64 file and an id derived from the file's path."""
    return {"image": base64.b64encode(path.read_bytes()).decode("utf-8"),
            "id": str(uuid.uuid5(uuid.NAMESPACE_OID, str(path)))}


def send_encoded_twice(url: str, data: dict[str, str]) -> requests.Response:
    return requests.post(url, json=json.dumps(data), headers={"Content-Type": "application/json"},
                         timeout=REQUEST_TIMEOUT_S)


def send_plain(url: str, data: dict[str, str]) -> requests.Response:
    return requests.post(url, json=data, timeout=REQUEST_TIMEOUT_S)


def test_every_image_sent_encoded_twice_gets_the_plain_answer(server: LiveServer, images: list[Path]) -> None:
    url = server.url + ENDPOINT
    sent = [request_data(path) for path in images]
    assert json.loads(send_encoded_twice(url, sent[0]).request.body) == json.dumps(sent[0]), "a JSON string is sent"
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        twice = list(pool.map(lambda data: send_encoded_twice(url, data), sent))
        plain = list(pool.map(lambda data: send_plain(url, data), sent))
    for data, answer, expected in zip(sent, twice, plain, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["id"] == data["id"]
        assert answer.json() == expected.json()
