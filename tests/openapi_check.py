"""Every answer the tests receive, checked against the served OpenAPI document (``clouddetect/openapi.yaml``).

The Flask test client and ``requests`` (what the live-server tests use) are wrapped for the whole session, so a
status, header or body the document does not describe fails the test that received it. Of ``requests``' answers
only hypercorn's are the service's (``clouddetect serve`` in a process, a container or a pod): other servers the
tests talk to, such as Locust's web UI, are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound

from clouddetect.openapi import document

# HEAD and OPTIONS answers carry no body; the document describes the methods that do.
UNCHECKED_METHODS = frozenset({"HEAD", "OPTIONS"})
# What the service answers for a path or method the document does not have: its JSON 404 and 405.
UNDOCUMENTED = {404: "not_found", 405: "method_not_allowed"}
SERVICE_SERVER = "hypercorn"


def spec() -> OpenAPI:
    return OpenAPI.from_dict(json.loads(json.dumps(document())))


def check(openapi: OpenAPI, request: Any, response: Any, method: str, status: int, body: bytes) -> None:
    if method.upper() in UNCHECKED_METHODS:
        return
    try:
        openapi.validate_response(request, response)
    except (PathNotFound, OperationNotFound):
        assert status in UNDOCUMENTED, f"{method} {status}: neither documented nor the service's 404/405"
        error = json.loads(body)["error"]
        assert error["code"] == UNDOCUMENTED[status] and isinstance(error["message"], str)


class AnsweredWerkzeugRequest(WerkzeugOpenAPIRequest):
    """The request of an answer: its body was read by the app, and checking the answer needs only its route."""

    body = None


class AnsweredRequestsRequest(RequestsOpenAPIRequest):
    """The same for ``requests``, whose body may have been a generator (a chunked upload)."""

    body = None


class CheckedClient(FlaskClient):
    openapi: OpenAPI

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        check(self.openapi, AnsweredWerkzeugRequest(response.request), WerkzeugOpenAPIResponse(response),
              response.request.method, response.status_code, response.get_data())
        return response


@contextmanager
def checking_every_answer() -> Iterator[None]:
    openapi = spec()
    send = requests.Session.send

    def checked_send(session: requests.Session, prepared: requests.PreparedRequest, **kwargs: Any) -> Any:
        response = send(session, prepared, **kwargs)
        if not kwargs.get("stream") and response.headers.get("Server", "").startswith(SERVICE_SERVER):
            check(openapi, AnsweredRequestsRequest(prepared), RequestsOpenAPIResponse(response),
                  prepared.method or "GET", response.status_code, response.content)
        return response

    CheckedClient.openapi = openapi
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Flask, "test_client_class", CheckedClient)
        patch.setattr(requests.Session, "send", checked_send)
        yield
