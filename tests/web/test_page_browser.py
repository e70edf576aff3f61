"""The try-it page in a real Chromium, against a real ``clouddetect serve`` on loopback.

Playwright drives Debian's Chromium (its own browser download cannot work here); the tests install Chromium
with apt-get when it is missing, which needs root, as CI has. Screenshots land in ``test-artifacts/web/``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, Response, sync_playwright

from clouddetect.verdicts import ENDPOINT, response_problem
from support import LiveServer, live_server, request_body

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_PACKAGES = ("chromium", "fonts-dejavu-core")
APT_LOCK_TIMEOUT_S = 600
# Without the background-networking flags Chromium keeps trying to reach Google's services, which fails here.
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ANSWER_TIMEOUT_MS = 30_000
REQUEST_TIMEOUT_S = 30.0
# Boxes are placed in CSS pixels from percentages; rounding may move an edge by a pixel.
BOX_TOLERANCE_PX = 1.5
MIN_OBJECTS = 3


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (CI runs as root on a fresh machine)."""
    if not CHROMIUM.exists():
        assert os.geteuid() == 0, f"{CHROMIUM} is missing; install it as root: apt-get install chromium"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", f"-oDPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}", "-q"]
        subprocess.run([*apt, "update"], check=True, env=env)
        subprocess.run([*apt, "install", "-y", "--no-install-recommends", *CHROMIUM_PACKAGES], check=True, env=env)
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=list(CHROMIUM_ARGS))
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page plus what it did: every URL it requested and every console error."""

    page: Page
    requested: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def assert_stayed_on(self, origin: str) -> None:
        outside = [url for url in self.requested if not url.startswith((origin + "/", "blob:"))]
        assert not outside, f"the page fetched from elsewhere: {outside}"
        assert not self.console_errors


def open_tab(browser: Browser, viewport: dict[str, int]) -> Tab:
    page = browser.new_context(viewport=viewport).new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    tab = Tab(page)
    page.on("request", lambda r: tab.requested.append(r.url))
    page.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    return tab


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    opened = open_tab(browser, DESKTOP)
    yield opened
    opened.page.context.close()


@pytest.fixture(scope="module")
def busy_image(server: LiveServer, images: list[Path]) -> Path:
    """The first test image in which the service finds several objects with different accuracies."""
    for path in images:
        objects = requests.post(server.url + ENDPOINT, json=request_body(path), timeout=REQUEST_TIMEOUT_S).json()[
            "objects"
        ]
        if len({o["accuracy"] for o in objects}) >= MIN_OBJECTS:
            return path
    raise AssertionError(f"no test image has {MIN_OBJECTS} objects")


def send_file(tab: Tab, path: Path) -> Response:
    """Choose ``path`` in the page's file picker and return the API's answer the page received."""
    with tab.page.expect_response(lambda r: r.url.endswith(ENDPOINT)) as answer:
        tab.page.set_input_files("#file-input", path)
    return answer.value


def drawn_boxes(page: Page) -> list[dict[str, object]]:
    return page.locator("#boxes .box:visible").evaluate_all(
        """boxes => boxes.map(b => {
             const r = b.getBoundingClientRect();
             return {label: b.dataset.label, accuracy: Number(b.dataset.accuracy),
                     text: b.querySelector('.box-label').textContent,
                     left: r.left, top: r.top, width: r.width, height: r.height};
           })"""
    )


def assert_boxes_drawn_as_answered(page: Page, objects: list[dict]) -> None:
    page.locator("#result").wait_for(state="visible")
    picture = page.evaluate(
        """() => { const img = document.getElementById('picture'); const r = img.getBoundingClientRect();
                  return {left: r.left, top: r.top, width: r.width, height: r.height,
                          natural_width: img.naturalWidth, natural_height: img.naturalHeight}; }"""
    )
    scale_x = picture["width"] / picture["natural_width"]
    scale_y = picture["height"] / picture["natural_height"]
    drawn = drawn_boxes(page)
    assert [(b["label"], b["accuracy"]) for b in drawn] == [(o["label"], o["accuracy"]) for o in objects]
    for box, obj in zip(drawn, objects, strict=True):
        label, shown_accuracy = box["text"].rsplit(" ", 1)
        assert label == obj["label"]
        assert abs(float(shown_accuracy) - obj["accuracy"]) <= 0.005
        rect = obj["rectangle"]
        expected = (picture["left"] + rect["left"] * scale_x, picture["top"] + rect["top"] * scale_y,
                    rect["width"] * scale_x, rect["height"] * scale_y)
        actual = (box["left"], box["top"], box["width"], box["height"])
        assert actual == pytest.approx(expected, abs=BOX_TOLERANCE_PX), obj


def test_chosen_image_is_sent_as_any_client_sends_it(tab: Tab, server: LiveServer, busy_image: Path) -> None:
    tab.page.goto(server.url)
    sent = json.loads(send_file(tab, busy_image).request.post_data or "")
    assert set(sent) == {"id", "image"}
    assert uuid.UUID(sent["id"]).version == 4
    assert base64.b64decode(sent["image"], validate=True) == busy_image.read_bytes()


def test_page_draws_the_apis_boxes(tab: Tab, server: LiveServer, busy_image: Path) -> None:
    tab.page.goto(server.url)
    response = send_file(tab, busy_image)
    request_id = json.loads(response.request.post_data or "")["id"]
    answer = response.json()
    assert response_problem(answer, request_id) is None
    any_client = requests.post(server.url + ENDPOINT, json=request_body(busy_image), timeout=REQUEST_TIMEOUT_S)
    assert answer["objects"] == any_client.json()["objects"]

    assert_boxes_drawn_as_answered(tab.page, answer["objects"])
    assert tab.page.locator("#object-rows tr:visible").count() == len(answer["objects"])
    assert tab.page.text_content("#request-id") == request_id
    assert re.fullmatch(r"\d+ ms .*", tab.page.text_content("#elapsed") or "")
    assert json.loads(tab.page.text_content("#raw-json") or "") == answer
    assert tab.page.locator("#error").is_hidden()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=ARTIFACTS / "desktop.png", full_page=True)
    tab.assert_stayed_on(server.url)


def test_threshold_slider_hides_boxes_below_it(tab: Tab, server: LiveServer, busy_image: Path) -> None:
    tab.page.goto(server.url)
    objects = send_file(tab, busy_image).json()["objects"]
    tab.page.locator("#result").wait_for(state="visible")
    accuracies = sorted(o["accuracy"] for o in objects)
    threshold = round((accuracies[0] + accuracies[-1]) / 2, 2)
    tab.page.locator("#threshold").fill(str(threshold))
    kept = [o for o in objects if o["accuracy"] >= threshold]
    assert 0 < len(kept) < len(objects)
    assert [b["label"] for b in drawn_boxes(tab.page)] == [o["label"] for o in kept]
    assert tab.page.locator("#object-rows tr:visible").count() == len(kept)
    assert tab.page.text_content("#shown-count") == f"{len(kept)} of {len(objects)}"
    assert tab.page.text_content("#threshold-value") == f"{threshold:.2f}"


# A file built in the page, handed over the way a drop or a paste hands it to the page's listeners.
FILE_EVENT = """([kind, name, base64]) => {
  const bytes = Uint8Array.from(atob(base64), c => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type: 'image/jpeg'}));
  const event = kind === 'drop'
    ? new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true})
    : new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true});
  (kind === 'drop' ? document.getElementById('drop-zone') : document).dispatchEvent(event);
}"""


@pytest.mark.parametrize("kind", ["drop", "paste"])
def test_dropped_or_pasted_image_is_detected(tab: Tab, server: LiveServer, busy_image: Path, kind: str) -> None:
    tab.page.goto(server.url)
    encoded = base64.b64encode(busy_image.read_bytes()).decode()
    with tab.page.expect_response(lambda r: r.url.endswith(ENDPOINT)) as answer:
        tab.page.evaluate(FILE_EVENT, [kind, busy_image.name, encoded])
    assert answer.value.status == 200
    assert_boxes_drawn_as_answered(tab.page, answer.value.json()["objects"])


def assert_error_shown(tab: Tab, response: Response, status: int, code: str, title: str) -> None:
    assert response.status == status
    tab.page.locator("#error").wait_for(state="visible")
    assert tab.page.text_content("#error-title") == title
    message = tab.page.text_content("#error-message") or ""
    assert f"({code}, HTTP {status})" in message
    assert message.startswith(response.json()["error"]["message"])
    assert tab.page.locator("#result").is_hidden()
    assert json.loads(tab.page.text_content("#raw-json") or "") == response.json()


def test_non_image_file_shows_a_readable_error(tab: Tab, server: LiveServer, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are words, not pixels\n")
    tab.page.goto(server.url)
    response = send_file(tab, notes)
    assert_error_shown(tab, response, 400, "not_an_image", "That file is not an image the detector can read")
    assert response.json()["id"] == json.loads(response.request.post_data or "")["id"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=ARTIFACTS / "error-not-an-image.png", full_page=True)


def test_too_large_image_shows_a_readable_error(tab: Tab, images: list[Path], tmp_path: Path) -> None:
    largest = max(images, key=lambda p: p.stat().st_size)
    limit = largest.stat().st_size  # the base64 body is a third larger than the file
    with live_server(tmp_path, "--max-body-bytes", str(limit)) as small:
        tab.page.goto(small.url)
        response = send_file(tab, largest)
        assert_error_shown(tab, response, 413, "body_too_large", "The image is too large for the service")


def test_page_fits_a_phone_screen(browser: Browser, server: LiveServer, busy_image: Path) -> None:
    phone = open_tab(browser, PHONE)
    try:
        phone.page.goto(server.url)
        objects = send_file(phone, busy_image).json()["objects"]
        assert_boxes_drawn_as_answered(phone.page, objects)
        overflow = phone.page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than the screen"
        assert phone.page.locator("#picture").bounding_box()["width"] <= PHONE["width"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        phone.page.screenshot(path=ARTIFACTS / "phone.png", full_page=True)
        phone.assert_stayed_on(server.url)
    finally:
        phone.page.context.close()


def test_docs_page_renders_the_api_document(tab: Tab, server: LiveServer) -> None:
    """Swagger UI from its PyPI package, under the page's Content-Security-Policy, fetching nothing from elsewhere."""
    document = requests.get(server.url + "/openapi.json", timeout=REQUEST_TIMEOUT_S).json()
    tab.page.goto(server.url + "/docs")
    endpoint = tab.page.locator(".opblock-post .opblock-summary-path", has_text=ENDPOINT)
    endpoint.wait_for()
    assert document["info"]["title"] in (tab.page.text_content("h2.title") or "")
    operations = sum(len(item) for item in document["paths"].values())
    assert tab.page.locator(".opblock").count() == operations
    endpoint.click()
    tab.page.locator(".opblock-post .responses-table").first.wait_for()
    shown = tab.page.locator(".opblock-post .response-col_status").all_text_contents()
    documented = document["paths"][ENDPOINT]["post"]["responses"]
    assert [s.strip() for s in shown if s.strip().isdigit()] == list(documented)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=ARTIFACTS / "docs.png", full_page=True)
    tab.assert_stayed_on(server.url)
