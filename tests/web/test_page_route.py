"""The try-it page is served read-only from the package and adds no way to write to the service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import swagger_ui_bundle
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


def test_docs_page_is_served_under_the_pages_policy_with_data_images(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.data == (WEB / "docs.html").read_bytes()
    page_policy = client.get("/").headers["Content-Security-Policy"]
    with_data_images = page_policy.replace("img-src 'self' blob:", "img-src 'self' blob: data:")
    assert response.headers["Content-Security-Policy"] == with_data_images != page_policy


def test_docs_page_refers_only_to_this_service() -> None:
    references = re.findall(r'(?:src|href)="([^"]+)"', (WEB / "docs.html").read_text())
    assert sorted(references) == sorted(
        ["/web/favicon.svg", "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/web/docs.js"]
    )


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js", "swagger-ui.css"])
def test_swagger_ui_files_come_from_their_package(client: FlaskClient, name: str) -> None:
    response = client.get(f"/docs/{name}")
    assert response.status_code == 200
    assert response.data == (Path(swagger_ui_bundle.swagger_ui_path) / name).read_bytes()


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "..%2fopenapi.yaml", "x"])
def test_no_other_file_is_served_under_docs(client: FlaskClient, name: str) -> None:
    assert client.get(f"/docs/{name}").status_code == 404
