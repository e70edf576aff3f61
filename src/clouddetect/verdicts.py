"""How a client judges an answer of ``POST /api/object_detection``: plain Python, no OpenCV or numpy.

Answer: ``{"id": str, "objects": [{"label": str, "accuracy": float, "rectangle": {"height": int, "left": int,
"top": int, "width": int}}]}``. Clients (the CLI client, the load test, any script) check answers with
``response_problem`` so they judge them as the service means them, without the service's dependencies, and count
an answer that takes longer than ``DEFAULT_REQUEST_TIMEOUT_S`` (unless told otherwise) as a failed request.
"""

from __future__ import annotations

from typing import Any

ENDPOINT = "/api/object_detection"
# A client that waits longer than this for an answer counts the request as failed (load test, lab, faults).
DEFAULT_REQUEST_TIMEOUT_S = 30.0
RECTANGLE_KEYS = ("height", "left", "top", "width")


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
