"""The server's half of the wire contract of ``POST /api/object_detection``: reading a request, writing an answer.

Request: ``{"id": str, "image": base64 str}``, or that object's JSON text sent as a JSON string. Answer: see
``clouddetect.verdicts``, which clients use to judge answers without the service's dependencies.
"""

from __future__ import annotations

import json
from typing import Any

from clouddetect.codec import decode_base64
from clouddetect.detector import Detection
from clouddetect.errors import InvalidField

_NOT_AN_OBJECT = 'the body must be a JSON object {"id": "...", "image": "<base64>"}'


def request_object(payload: Any) -> dict[str, Any]:
    """The request's JSON object.

    ``requests.post(url, json=json.dumps(data))`` encodes the object twice, so the body is a JSON string holding
    the object's JSON text; widely used clients send that, so such a string is decoded once more (only once). The
    text is part of the body, so the body limit bounds it as well.
    """
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError):
            raise InvalidField(_NOT_AN_OBJECT) from None
    if not isinstance(payload, dict):
        raise InvalidField(_NOT_AN_OBJECT)
    return payload


def request_id_of(payload: dict[str, Any]) -> str:
    found = payload.get("id")
    if not isinstance(found, str) or not found:
        raise InvalidField('"id" must be a non-empty string, e.g. a UUID')
    return found


def image_bytes_of(payload: dict[str, Any]) -> bytes:
    """The image file's bytes."""
    image = payload.get("image")
    if not isinstance(image, str):
        raise InvalidField('"image" must be a base64 string of an image file')
    return decode_base64(image)


def response_body(request_id: str, detections: list[Detection]) -> dict[str, Any]:
    return {
        "id": request_id,
        "objects": [
            {
                "label": d.label,
                "accuracy": d.confidence,
                "rectangle": {"height": d.box.height, "left": d.box.left, "top": d.box.top, "width": d.box.width},
            }
            for d in detections
        ],
    }
