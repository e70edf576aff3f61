"""The documentation follows the code: the settings table is generated from Settings, and every link resolves.

``UPDATE_DOCS=1 pytest tests/test_docs.py`` rewrites the settings table in docs/operations.md from
``clouddetect.config.Settings``; without it the test fails and shows the table it expects.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from clouddetect import config
from clouddetect.cli import serve
from clouddetect.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
OPERATIONS = ROOT / "docs" / "operations.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"
README_MAX_LINES = 200

# Defaults computed from the machine or the environment (config's _default_* functions), written as their rule.
DEFAULT_RULES = {
    "model_dir": "`$XDG_CACHE_HOME/clouddetect/yolov3-tiny`, where `XDG_CACHE_HOME` defaults to `~/.cache`",
    "instance_name": "`$POD_NAME`, else the host name",
}


def default_text(name: str, value: object) -> str:
    if name in DEFAULT_RULES:
        return DEFAULT_RULES[name]
    if "bytes" in name and isinstance(value, int) and value % 1024 == 0:
        size, unit = next((value // 1024**p, u) for p, u in ((2, "MiB"), (1, "KiB"), (0, "B")) if value % 1024**p == 0)
        return f"`{value}` ({size} {unit})"
    return f"`{value}`"


def settings_table() -> str:
    """The settings table as docs/operations.md holds it between its markers."""
    flags = {param.name: param.opts[0] for param in serve.params}
    lines = ["| setting | env var | flag | default | meaning |", "|---|---|---|---|---|"]
    for f in fields(Settings):
        meaning = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` | `{flags[f.name]}` "
                     f"| {default_text(f.name, f.default)} | {meaning} |")
    return "\n".join(lines) + "\n"


def test_settings_table_in_operations_page_is_generated_from_settings() -> None:
    text = OPERATIONS.read_text()
    block = re.compile(rf"(?<={re.escape(START)}\n).*?(?={re.escape(END)})", re.S)
    assert block.search(text), f"{OPERATIONS} lacks the markers {START} / {END}"
    expected = settings_table()
    if os.environ.get("UPDATE_DOCS") == "1":
        OPERATIONS.write_text(block.sub(lambda _: expected, text, count=1))
        return
    if block.search(text).group(0) != expected:
        pytest.fail(f"the settings table in {OPERATIONS.relative_to(ROOT)} is out of date "
                    f"(UPDATE_DOCS=1 rewrites it); expected:\n{expected}", pytrace=False)


def test_every_machine_dependent_default_is_written_as_its_rule() -> None:
    computed = [getattr(config, name)() for name in dir(config) if name.startswith("_default_")]
    machine_dependent = {f.name for f in fields(Settings) if f.default is not MISSING and f.default in computed}
    assert len(machine_dependent) == len(computed)
    assert machine_dependent == set(DEFAULT_RULES)


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"
