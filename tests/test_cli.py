"""The ``clouddetect`` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from clouddetect.codec import decode_image
from clouddetect.request_json import response_body
from clouddetect.verdicts import ENDPOINT
from support import assert_same_objects, live_server, request_body

# What only the lab, the report or Locust need; a serving process must not load any of it.
NOT_FOR_SERVING = ("clouddetect.lab", "clouddetect.loadtest", "clouddetect.submission", "locust", "gevent",
                   "matplotlib", "kubernetes")


def clouddetect(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clouddetect", *args], capture_output=True, text=True,
                          timeout=timeout_s)


def test_detect_prints_the_api_answer_per_image(detector, images) -> None:
    result = clouddetect("detect", str(images[1]), str(images[2]))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for path, line in zip(images[1:3], lines, strict=True):
        expected = response_body(str(path), detector.detect(decode_image(path.read_bytes())))
        assert line["id"] == str(path)
        assert_same_objects(line["objects"], json.loads(json.dumps(expected["objects"])), path.name)


def test_detect_reports_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    result = clouddetect("detect", str(text))
    assert result.returncode == 1 and "does not decode as an image" in result.stderr


def test_model_fetch_from_a_folder(tmp_path: Path, model_files) -> None:
    result = clouddetect("model", "fetch", "--from", str(model_files.cfg.parent), "--model-dir", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    assert "converted from the Darknet files, each checked against OpenCV's outputs" in result.stdout
    for name in ("yolov3-tiny.onnx", "yolov3-tiny.xml", "yolov3-tiny.bin"):
        assert (tmp_path / "m" / name).is_file() and (tmp_path / "m" / f"{name}.sha256").is_file(), name


def test_client_on_a_folder_without_images_says_so(tmp_path: Path) -> None:
    result = clouddetect("client", "http://127.0.0.1:5999", str(tmp_path))
    assert result.returncode == 1 and "no image files" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("flag", "value", "fragment"),
                         [("--port", "80", "above 1024"), ("--winograd", "maybe", "one of auto, on, off")])
def test_bad_setting_is_a_usage_error(flag: str, value: str, fragment: str) -> None:
    result = clouddetect("serve", flag, value)
    assert result.returncode == 2 and fragment in result.stderr


def test_detect_takes_winograd_as_a_flag(images) -> None:
    result = clouddetect("detect", "--winograd", "on", "--winograd-min-memory-bytes", "1", str(images[1]))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == str(images[1])


@pytest.mark.slow
def test_client_sends_a_folder_and_summarises(server, images, tmp_path: Path) -> None:
    folder = tmp_path / "few"
    folder.mkdir()
    for path in images[:6]:
        (folder / path.name).symlink_to(path)
    result = clouddetect("client", server.url, str(folder), "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 6 and all("objects" in a for a in answers)
    assert "6 images, 6 ok, 0 failed" in result.stderr


@pytest.mark.slow
def test_serve_loads_no_lab_report_or_locust_module(tmp_path: Path, images: list[Path]) -> None:
    # Python lists every module it imports on stderr (-X importtime), in the supervisor and in forked workers alike.
    with live_server(tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"}) as server:
        answer = requests.post(server.url + ENDPOINT, json=request_body(images[0]), timeout=60)
        assert answer.status_code == 200
        log = server.log()
    imported = {line.rsplit("|", 1)[1].strip() for line in log.splitlines() if line.startswith("import time:")}
    assert "clouddetect.server" in imported and "flask" in imported  # the listing works
    assert not {m for m in imported if m.split(".")[0] in NOT_FOR_SERVING or m.startswith(NOT_FOR_SERVING)}

