"""The OpenAPI document: valid, served, complete (every route, every error code), and really used by the tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from openapi_check import check, spec
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_spec_validator import validate

from clouddetect import errors
from clouddetect.openapi import document

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
TABLE_ROW = re.compile(r"^\| (\d{3}(?: / \d{3})*) \| (`[a-z0-9_]+`.*?) \| .* \|$", re.M)


def api_page_error_codes() -> set[tuple[int, str]]:
    """(status, code) of every row of the error table in docs/api.md; a row "404 / 405 | `a` / `b`" gives two."""
    pairs = set()
    for statuses, codes in TABLE_ROW.findall(API_PAGE.read_text()):
        names = re.findall(r"`([a-z0-9_]+)`", codes.split("(")[0])
        pairs |= set(zip((int(s) for s in statuses.split(" / ")), names, strict=True))
    return pairs


def documented_error_codes() -> set[tuple[int, str]]:
    """(status, code) of every error answer the document describes, from the code enums of its schemas."""
    doc = document()
    responses = [r for item in doc["paths"].values() for op in item.values() for r in op["responses"].items()]
    responses += [(None, r) for r in doc["components"]["responses"].values()]
    pairs = set()
    for status, response in responses:
        if "$ref" in response:
            continue
        for content in response.get("content", {}).values():
            for part in content["schema"].get("allOf", []):
                codes = part.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
                for code in codes.get("enum", []):
                    pairs.add((int(status) if status else STATUS_OF_SHARED[code], code))
    return pairs


STATUS_OF_SHARED = {"not_found": 404, "method_not_allowed": 405}


def test_document_is_valid_openapi() -> None:
    validate(document())


def test_document_is_served(client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.get_json() == document()


def test_every_route_is_documented(app) -> None:
    routes = {re.sub(r"<(?:\w+:)?\w+>", "{}", rule.rule) for rule in app.url_map.iter_rules()}
    documented = {re.sub(r"\{\w+\}", "{}", path) for path in document()["paths"]}
    assert routes == documented


def test_every_error_of_the_api_page_table_is_documented_and_nothing_else() -> None:
    assert api_page_error_codes() == documented_error_codes()


def test_every_client_error_is_in_the_api_page_table() -> None:
    kinds = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ClientError)]
    raised = {(c.status, c.code) for c in kinds if c is not errors.ClientError}
    assert raised <= api_page_error_codes()


def test_an_answer_the_document_does_not_describe_fails_the_check() -> None:
    prepared = requests.Request("GET", "http://127.0.0.1/healthz").prepare()
    answer = requests.Response()
    answer.status_code, answer._content = 200, b'{"status": "sleeping"}'
    answer.headers["Content-Type"] = "application/json"
    with pytest.raises(Exception, match="sleeping"):
        check(spec(), RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(answer), "GET", 200, answer.content)
