"""``report.pdf`` read back: its text (``pdftotext``), fonts (``pdffonts``), page and images (poppler-utils).

The PDF is printed by Debian's Chromium in Liberation Serif; the tests install Chromium, fonts-liberation and
poppler-utils with apt-get when missing (root, as CI runs). The last test is the acceptance: a short real
``lab run --url`` against a local server, then ``lab report``, and the PDF's text holds the numbers and the discussion.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from clouddetect.lab.capacity.results import Experiment
from clouddetect.lab.report import pdf
from clouddetect.lab.report import write as report
from clouddetect.lab.report.analysis import gather
from support import apt_install, live_server

pytestmark = pytest.mark.browser

RECORDED = Path(__file__).parents[1] / "recorded" / "one-pod"
PACKAGES = ["chromium", "fonts-liberation", "poppler-utils"]
PDF_TIMEOUT_S = 120.0
LAB_TIMEOUT_S = 300.0
POINTS_PER_INCH = 72
A4_PT = (595.0, 842.0)
# Chromium rounds the page to whole CSS pixels and places words on them; poppler reports sub-point boxes.
TOLERANCE_PT = 1.5
# A line of Liberation Serif is its ascent + descent (0.891 + 0.216 em) high in pdftotext's word boxes.
LIBERATION_SERIF_LINE_EM = 1.107


@pytest.fixture(scope="module")
def printer() -> pdf.Printer:
    fonts = subprocess.run(["fc-list", report.FONT_FAMILY], capture_output=True, text=True, check=False).stdout
    if not all(shutil.which(tool) for tool in ("chromium", "pdftotext", "pdffonts")) or not fonts.strip():
        apt_install(PACKAGES)
    return pdf.Printer(pdf.find_chromium(), report.FONT_FAMILY, PDF_TIMEOUT_S)


@dataclass(frozen=True)
class Word:
    text: str
    page: int
    x0: float
    y0: float
    x1: float
    y1: float


def pdf_text(path: Path) -> str:
    """The PDF's text with every run of whitespace made one space (lines and table cells wrap anywhere)."""
    done = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True)
    return " ".join(done.stdout.split())


def pdf_words(path: Path) -> tuple[list[tuple[float, float]], list[Word]]:
    """Each page's size and every word's box, from ``pdftotext -bbox``."""
    done = subprocess.run(["pdftotext", "-bbox", str(path), "-"], capture_output=True, text=True, check=True)
    pages, words = [], []
    for line in done.stdout.splitlines():
        if page := re.search(r'<page width="([\d.]+)" height="([\d.]+)"', line):
            pages.append((float(page.group(1)), float(page.group(2))))
        elif word := re.search(r'xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*)</word>', line):
            x0, y0, x1, y1 = (float(word.group(i)) for i in range(1, 5))
            words.append(Word(word.group(5), len(pages), x0, y0, x1, y1))
    return pages, words


def fonts(path: Path) -> list[str]:
    done = subprocess.run(["pdffonts", str(path)], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in done.stdout.splitlines()[2:]]


def image_count(path: Path) -> int:
    done = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True, text=True, check=True)
    return len(done.stdout.splitlines()[2:])


@pytest.fixture(scope="module")
def printed(printer: pdf.Printer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[report.Block]]:
    out = tmp_path_factory.mktemp("report")
    title = report.TitleBlock("Capacity of CloudDetect", "A. Student", ["Cloud Computing, 2026"])
    report.write([RECORDED], out, title, printer=printer)
    return out / report.REPORT_PDF, report.build([Experiment.load(RECORDED)], out)


def test_pdf_text_holds_the_title_block_the_table_and_the_whole_discussion(
        printed: tuple[Path, list[report.Block]]) -> None:
    path, blocks = printed
    text = pdf_text(path)
    assert text.startswith("Capacity of CloudDetect A. Student Cloud Computing, 2026")
    [run] = Experiment.load(RECORDED).runs
    assert f"{run.max_users} ± 0 (n=1) {run.avg_ms:.0f} ± 0 ms (n=1)" in text
    assert f"{run.saturation_rps:.1f} ± 0.0 (n=1)" in text
    discussion = report.discussion(gather([Experiment.load(RECORDED)]))
    paragraphs = [b.text for b in discussion if isinstance(b, report.Paragraph)]
    assert len(paragraphs) >= 8
    unhyphenated = text.replace("-", "")  # pdftotext drops a hyphen where a line breaks after it
    for paragraph in paragraphs:
        assert " ".join(paragraph.split()).replace("-", "") in unhyphenated
    assert report.OBSERVATIONS in text and report.CHALLENGES in text


def test_pdf_is_set_in_liberation_serif(printed: tuple[Path, list[report.Block]]) -> None:
    path, _ = printed
    names = fonts(path)
    assert names and all(re.fullmatch(r"[A-Z]{6}\+LiberationSerif(-\w+)?", name) for name in names), names
    _, words = pdf_words(path)
    body = [w for w in words if w.text == "requests/s"]  # a word of the discussion's 12 pt paragraphs
    heights = [w.y1 - w.y0 for w in body]
    assert heights and statistics.median(heights) == pytest.approx(12 * LIBERATION_SERIF_LINE_EM, abs=0.3)


def test_pdf_pages_are_a4_with_one_inch_margins(printed: tuple[Path, list[report.Block]]) -> None:
    path, _ = printed
    pages, words = pdf_words(path)
    assert pages and all(size == pytest.approx(A4_PT, abs=TOLERANCE_PT) for size in pages)
    margin = report.PAGE_MARGIN_IN * POINTS_PER_INCH
    width, height = pages[0]
    assert min(w.x0 for w in words) == pytest.approx(margin, abs=TOLERANCE_PT)  # text starts at the margin
    assert all(w.x0 >= margin - TOLERANCE_PT and w.x1 <= width - margin + TOLERANCE_PT for w in words)
    assert all(w.y0 >= margin - TOLERANCE_PT and w.y1 <= height - margin + TOLERANCE_PT for w in words)


def test_pdf_holds_every_drawn_figure(printed: tuple[Path, list[report.Block]]) -> None:
    path, blocks = printed
    drawn = [b for b in blocks if isinstance(b, report.Image)]
    assert len(drawn) == 4 and image_count(path) == len(drawn)


@pytest.mark.slow
def test_lab_run_then_report_gives_a_pdf_with_the_numbers_and_the_discussion(
        printer: pdf.Printer, tmp_path: Path, images: list[Path]) -> None:
    """Acceptance: a short real experiment against a local server, its report, and the PDF's text read back."""
    out = tmp_path / "experiment"
    with live_server(tmp_path, "--max-waiting-requests", "2") as server:
        subprocess.run([sys.executable, "-m", "clouddetect", "lab", "run", "--url", server.url, "--out", str(out),
                        "--images", str(images[0].parent), "--repeats", "1", "--hold-s", "3", "--max-extension-s",
                        "3", "--slo-hold-s", "3", "--poll-interval-s", "0.2"],
                       check=True, capture_output=True, timeout=LAB_TIMEOUT_S)
    subprocess.run([sys.executable, "-m", "clouddetect", "lab", "report", str(out), "--author", "A. Student",
                    "--chromium", str(printer.chromium)], check=True, capture_output=True, timeout=LAB_TIMEOUT_S)
    [run] = json.loads((out / "runs.json").read_text())
    text = pdf_text(out / "report" / report.REPORT_PDF)
    assert f"1 {run['max_users']} ± 0 (n=1) {run['avg_ms']:.0f} ± 0 ms (n=1) - -" in text
    assert (f"At capacity ({run['max_users']} users, 1 pod, client on master) the mean response time was "
            f"{run['avg_ms']:,.0f} ms") in text
    assert "HTTP 503" in text and "503s come from the admission bound" in text
    assert report.CHALLENGES in text
