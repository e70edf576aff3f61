"""Shared fixtures: the real model, the 128 real test images, fresh apps and real servers on loopback."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_check import checking_every_answer

from clouddetect.api import create_app
from clouddetect.config import Settings
from clouddetect.detector import Detector
from clouddetect.images import image_files
from clouddetect.model_store import ModelFiles, locate
from support import LiveServer, free_port, live_server, request_body  # noqa: F401 - re-exported for tests

ROOT = Path(__file__).resolve().parents[1]
IMAGES = Path(os.environ.get("CLOUDDETECT_IMAGES", ROOT.parent / "shared" / "datasets" / "inputfolder"))


@pytest.fixture(scope="session", autouse=True)
def answers_keep_the_openapi_document() -> Iterator[None]:
    with checking_every_answer():
        yield


@pytest.fixture(scope="session")
def images() -> list[Path]:
    files = image_files(IMAGES)
    assert len(files) == 128, f"expected the 128 test images in {IMAGES}"
    return files


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.load()


@pytest.fixture(scope="session")
def model_files(settings: Settings) -> ModelFiles:
    return locate(settings.model_dir)


@pytest.fixture(scope="session")
def detector(model_files: ModelFiles, settings: Settings) -> Detector:
    """The reference: OpenCV's DNN on the Darknet files, whatever engine the default would choose."""
    warm = Detector(model_files, dataclasses.replace(settings, engine="opencv"))
    warm.warm_up()
    return warm


@pytest.fixture(scope="session")
def converted_model(model_files: ModelFiles) -> Path:
    """OpenVINO's IR beside the Darknet files (the ONNX graph on the way), converted and checked here if
    ``make setup`` has not yet."""
    from clouddetect.darknet_onnx import convert

    return convert(model_files)


@pytest.fixture(scope="session")
def openvino_detector(model_files: ModelFiles, settings: Settings, converted_model: Path) -> Detector:
    warm = Detector(model_files, dataclasses.replace(settings, engine="openvino", precision="f32"))
    warm.warm_up()
    return warm


@pytest.fixture
def app(settings: Settings, detector: Detector) -> Flask:
    return create_app(settings, detector)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("server")) as running:
        yield running
