"""How the load test judges one answer, kept free of Locust (which monkey-patches whatever imports it).

Each failure is reported as a short kind rather than the full problem, so Locust's failure table groups them
("HTTP 503", "timeout", ...) instead of listing every request id once.
"""

from __future__ import annotations

import json

from clouddetect.verdicts import response_problem

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
    # geventhttpclient raises socket.timeout (an alias of TimeoutError) or gevent's own Timeout.
    return isinstance(error, TimeoutError) or "timeout" in type(error).__name__.lower()
