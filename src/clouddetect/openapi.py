"""The OpenAPI document of the HTTP API, written once in ``openapi.yaml`` beside this module."""

from __future__ import annotations

from functools import cache
from importlib.metadata import version
from importlib.resources import files
from typing import Any

import yaml

DOCUMENT_FILE = "openapi.yaml"


@cache
def document() -> dict[str, Any]:
    """The document as served, its version that of the installed package; callers must not change it."""
    loaded = yaml.safe_load(files("clouddetect").joinpath(DOCUMENT_FILE).read_text(encoding="utf-8"))
    loaded["info"]["version"] = version("clouddetect")
    return loaded
