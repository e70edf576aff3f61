"""The wire contract of ``POST /api/object_detection``, both ways, in one place.

Request: ``{"id": str, "image": base64 str}``. Response: ``{"id": str, "objects": [{"label": str,
"accuracy": float, "rectangle": {"height": int, "left": int, "top": int, "width": int}}]}``.
Clients (the CLI client, the load test) check answers with ``response_problem`` so they judge them as the
service means them.
"""

from __future__ import annotations

from typing import Any

from clouddetect.codec import decode_base64
from clouddetect.detector import Detection
from clouddetect.errors import ClientError, InvalidField

ENDPOINT = "/api/object_detection"
RECTANGLE_KEYS = ("height", "left", "top", "width")


def parse_request(payload: Any) -> tuple[str, bytes]:
    """The request's id and the image file's bytes."""
    if not isinstance(payload, dict):
        raise InvalidField('the body must be a JSON object {"id": "...", "image": "<base64>"}')
    request_id = payload.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidField('"id" must be a non-empty string, e.g. a UUID')
    image = payload.get("image")
    if not isinstance(image, str):
        raise InvalidField('"image" must be a base64 string of an image file', request_id)
    try:
        return request_id, decode_base64(image)
    except ClientError as exc:
        exc.request_id = request_id
        raise


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


def response_problem(body: Any, expected_id: str) -> str | None:
    """What is wrong with an answer, or None when it keeps the contract."""
    if not isinstance(body, dict):
        return "answer is not a JSON object"
    if body.get("id") != expected_id:
        return f"id {body.get('id')!r} does not match the request's {expected_id!r}"
    objects = body.get("objects")
    if not isinstance(objects, list):
        return '"objects" is missing or not a list'
    for obj in objects:
        if not _object_ok(obj):
            return f"malformed object {obj!r}"
    return None


def _object_ok(obj: Any) -> bool:
    if not isinstance(obj, dict) or not isinstance(obj.get("label"), str):
        return False
    accuracy = obj.get("accuracy")
    if isinstance(accuracy, bool) or not isinstance(accuracy, float | int) or not 0 <= accuracy <= 1:
        return False
    rect = obj.get("rectangle")
    return isinstance(rect, dict) and all(
        isinstance(rect.get(k), int) and not isinstance(rect.get(k), bool) and rect[k] >= 0 for k in RECTANGLE_KEYS
    )
