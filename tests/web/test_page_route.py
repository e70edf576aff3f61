"""The try-it page is served read-only from the package and adds no way to write to the service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask.testing import FlaskClient

import clouddetect

WEB = Path(clouddetect.__file__).parent / "web"
PAGE_ASSETS = {"style.css": "text/css", "app.js": "text/javascript", "favicon.svg": "image/svg+xml"}


def test_root_serves_the_page(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.data == (WEB / "index.html").read_bytes()


def test_page_may_load_only_its_own_files(client: FlaskClient) -> None:
    policy = client.get("/").headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "http" not in policy


@pytest.mark.parametrize(("name", "mimetype"), PAGE_ASSETS.items())
def test_page_assets_are_served_from_the_package(client: FlaskClient, name: str, mimetype: str) -> None:
    response = client.get(f"/web/{name}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.data == (WEB / name).read_bytes()


def test_page_refers_only_to_its_own_assets() -> None:
    html = (WEB / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references, "the page loads its script and style sheet"
    assert sorted(references) == sorted(f"/web/{name}" for name in PAGE_ASSETS)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/", "/web/app.js"])
def test_page_routes_accept_no_writes(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(path, method=method, data=b"x")
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/web/../api.py", "/web/%2e%2e/api.py", "/web/..%2fapi.py", "/web/"])
def test_nothing_outside_the_page_folder_is_served(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 404
