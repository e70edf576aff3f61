"""The image files a client sends: a folder of JPEG/PNG/... files, read as base64 once."""

from __future__ import annotations

import base64
import os
from pathlib import Path

# The formats the API decodes (see codec.py).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
IMAGES_ENV = "CLOUDDETECT_IMAGES"
# The 128 COCO test images sit beside a checkout of the project.
DEVELOPMENT_FOLDER = Path("../shared/datasets/inputfolder")


def default_folder() -> Path:
    return Path(os.environ.get(IMAGES_ENV, DEVELOPMENT_FOLDER))


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def encode_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")
