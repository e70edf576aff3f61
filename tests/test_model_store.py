"""Fetching the model files from a folder, a zip and a URL, and refusing corrupt ones."""

from __future__ import annotations

import functools
import shutil
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest

from clouddetect.model_store import CFG, NAMES, SHA256, WEIGHTS, ModelError, ModelFiles, fetch, locate
from support import http_server


@pytest.fixture
def course_folder(tmp_path: Path, model_files: ModelFiles) -> Path:
    """The files as a course hands them out: nested in a folder of their own."""
    folder = tmp_path / "course" / "yolo_tiny_configs"
    folder.mkdir(parents=True)
    for source in (model_files.cfg, model_files.weights, model_files.names):
        shutil.copy(source, folder / source.name)
    return tmp_path / "course"


@pytest.fixture
def course_zip(tmp_path: Path, course_folder: Path) -> Path:
    archive = tmp_path / "yolo_tiny_configs.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in course_folder.rglob("*"):
            zipped.write(path, path.relative_to(course_folder))
    return archive


@pytest.fixture
def http_folder(course_zip: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving the zip's folder."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(course_zip.parent))
    with http_server(handler) as url:
        yield url


def assert_verified(folder: Path) -> None:
    files = locate(folder)
    assert files.labels()[0] == "person" and len(files.labels()) == 80


def test_fetch_from_a_folder(tmp_path: Path, course_folder: Path) -> None:
    fetch(tmp_path / "models", str(course_folder))
    assert_verified(tmp_path / "models")


def test_fetch_from_a_zip(tmp_path: Path, course_zip: Path) -> None:
    fetch(tmp_path / "models", str(course_zip))
    assert_verified(tmp_path / "models")


def test_fetch_from_a_url(tmp_path: Path, http_folder: str) -> None:
    fetch(tmp_path / "models", f"{http_folder}/yolo_tiny_configs.zip")
    assert_verified(tmp_path / "models")


def test_unreachable_url_is_a_model_error(tmp_path: Path, http_folder: str) -> None:
    with pytest.raises(ModelError, match="cannot download"):
        fetch(tmp_path / "models", f"{http_folder}/missing.zip")


def test_corrupt_weights_are_refused_and_not_installed(tmp_path: Path, course_folder: Path) -> None:
    weights = next(course_folder.rglob(WEIGHTS))
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF
    weights.write_bytes(bytes(data))
    target = tmp_path / "models"
    with pytest.raises(ModelError, match=SHA256[WEIGHTS]):
        fetch(target, str(course_folder))
    assert not (target / WEIGHTS).exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")], "no partial file is left behind"


def test_damaged_zip_is_a_model_error(tmp_path: Path, course_zip: Path) -> None:
    data = bytearray(course_zip.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # inside the weights' bytes; the archive's directory stays readable
    course_zip.write_bytes(bytes(data))
    with pytest.raises(ModelError):
        fetch(tmp_path / "models", str(course_zip))
    assert not (tmp_path / "models" / WEIGHTS).exists()


def test_source_without_the_files_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not found"):
        fetch(tmp_path / "models", str(tmp_path / "empty"))


def test_locate_names_the_missing_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="clouddetect model fetch") as caught:
        locate(tmp_path)
    assert CFG in str(caught.value)


def test_locate_refuses_a_corrupt_file(tmp_path: Path, course_folder: Path) -> None:
    fetch(tmp_path, str(course_folder))
    (tmp_path / NAMES).write_text("cat\n")
    with pytest.raises(ModelError, match="SHA-256"):
        locate(tmp_path)


def test_intact_files_are_kept_without_a_source(tmp_path: Path, course_folder: Path) -> None:
    fetch(tmp_path, str(course_folder))
    assert fetch(tmp_path, "/nonexistent/source") == ModelFiles.in_dir(tmp_path)
