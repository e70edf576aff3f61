"""The report's PDF: its HTML printed by Chromium's headless print-to-PDF (Debian's ``chromium`` package).

Chromium lays out the same HTML and print style as ``report.html`` (page size and margins from its ``@page`` rule)
and embeds the fonts it used. Nothing is installed here: Chromium is looked up on PATH (or given), and the report's
font must be installed (Debian's ``fonts-liberation``), else Chromium would silently print in another one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Headless, as root, offline: without the background-networking flags Chromium keeps trying to reach its services.
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-pdf-header-footer",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


class PdfError(RuntimeError):
    """The PDF cannot be printed here: Chromium or the font is missing, or printing failed."""


def find_chromium(given: str | None = None) -> Path:
    for name in ([given] if given else CHROMIUM_NAMES):
        if found := shutil.which(name):
            return Path(found)
    raise PdfError(f"{given or 'chromium'} not found on PATH: the PDF is printed by Chromium; install it "
                   "(Debian: apt-get install chromium fonts-liberation), pass --chromium PATH, or --no-pdf")


def require_font(family: str) -> None:
    """Fontconfig (which Chromium uses) must know ``family``; a silent substitute would change the layout."""
    try:
        listed = subprocess.run(["fc-list", family, "family"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        raise PdfError("fc-list is missing: the font check needs it (Debian: apt-get install fontconfig)") from None
    if not listed.strip():
        raise PdfError(f"font {family!r} is not installed (Debian: apt-get install fonts-liberation fontconfig)")


@dataclass(frozen=True)
class Printer:
    chromium: Path
    font_family: str
    timeout_s: float

    def print(self, html: Path, pdf: Path) -> None:
        require_font(self.font_family)
        pdf.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="clouddetect-chromium-") as profile:
            command = [str(self.chromium), *CHROMIUM_ARGS, f"--user-data-dir={profile}",
                       f"--print-to-pdf={pdf.resolve()}", html.resolve().as_uri()]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise PdfError(f"Chromium did not print {html} within {self.timeout_s:g} s") from None
        if done.returncode != 0 or not pdf.exists():
            raise PdfError(f"Chromium failed to print {html} (exit {done.returncode}): {done.stderr.strip()[-500:]}")
