"""How a client judges one request to ``POST /api/object_detection``: plain Python, no OpenCV, numpy or Locust.

Answer: ``{"id": str, "objects": [{"label": str, "accuracy": float, "rectangle": {"height": int, "left": int,
"top": int, "width": int}}]}``. Every client here (the CLI client, the Locust users, the fault runs) judges with
``failure_kind``, so a failed request has one name everywhere: a short kind ("HTTP 503", "timeout", ...) that
groups in tables, while ``response_problem`` says in words what is wrong with an answer. An answer that takes
longer than ``DEFAULT_REQUEST_TIMEOUT_S`` (unless told otherwise) is a failed request.
"""

from __future__ import annotations

import json
from typing import Any

ENDPOINT = "/api/object_detection"
# A client states here how many seconds it waits, so the service never works for it longer (nor queues it in vain).
TIMEOUT_HEADER = "X-Request-Timeout"
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


# Kinds of failure besides "HTTP <status>" and "connection error: <exception>".
TIMEOUT = "timeout"
INVALID_JSON = "invalid JSON"
WRONG_ID = "wrong id"
MALFORMED = "malformed answer"


def failure_kind(
    status: int, text: str | None, request_id: str, elapsed_s: float, timeout_s: float,
    error: BaseException | None = None,
) -> str | None:
    """The kind of failure of one answer, or None when it is a timely answer that keeps the contract."""
    if error is not None:
        cause = _original(error)
        return TIMEOUT if _is_timeout(cause) else f"connection error: {type(cause).__name__}"
    if elapsed_s > timeout_s:
        return TIMEOUT
    if status != 200:
        return f"HTTP {status}"
    try:
        body = json.loads(text or "")
    except ValueError:
        return INVALID_JSON
    if response_problem(body, request_id) is None:
        return None
    if isinstance(body, dict) and body.get("id") != request_id:
        return WRONG_ID
    return MALFORMED


def _original(error: BaseException) -> BaseException:
    """The error under geventhttpclient's wrappers (RetriesExceeded keeps the last attempt's as ``original``)."""
    while isinstance(getattr(error, "original", None), BaseException):
        error = error.original  # type: ignore[attr-defined]
    return error


def _is_timeout(error: BaseException) -> bool:
    # geventhttpclient raises socket.timeout (an alias of TimeoutError) or gevent's own Timeout; requests raises
    # ReadTimeout or ConnectTimeout.
    return isinstance(error, TimeoutError) or "timeout" in type(error).__name__.lower()


def describe_kinds(counts: dict[str, int], none: str = "no failure") -> str:
    """Failure counts by kind, most frequent first: "3 × timeout; 1 × HTTP 503"."""
    ranked = sorted(counts.items(), key=lambda kind_count: -kind_count[1])
    return "; ".join(f"{count} × {kind}" for kind, count in ranked) or none
