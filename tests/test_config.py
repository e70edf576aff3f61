from pathlib import Path

import pytest

from clouddetect.config import Settings


def test_defaults_suit_a_half_cpu_pod() -> None:
    settings = Settings.load(environ={})
    assert (settings.port, settings.workers, settings.inference_threads, settings.winograd) == (5000, 1, 1, "auto")
    assert settings.winograd_min_memory_bytes == 640 * 1024 * 1024  # a 501 MiB peak under 80% of it
    assert settings.max_waiting_requests >= 64


def test_environment_overrides_defaults() -> None:
    env = {"CLOUDDETECT_PORT": "6000", "CLOUDDETECT_WINOGRAD": "true", "CLOUDDETECT_MODEL_DIR": "/models",
           "CLOUDDETECT_CONFIDENCE_THRESHOLD": "0.25"}
    settings = Settings.load(environ=env)
    assert (settings.port, settings.winograd, settings.model_dir) == (6000, "on", Path("/models"))
    assert settings.confidence_threshold == 0.25


@pytest.mark.parametrize(
    ("raw", "chosen"),
    [("auto", "auto"), ("on", "on"), ("off", "off"), ("ON", "on"), ("true", "on"), ("false", "off"), ("1", "on"),
     ("0", "off")],
)
def test_winograd_is_auto_on_or_off_and_still_takes_true_or_false(raw: str, chosen: str) -> None:
    assert Settings.load(environ={"CLOUDDETECT_WINOGRAD": raw}).winograd == chosen


def test_winograd_flag_overrides_environment() -> None:
    env = {"CLOUDDETECT_WINOGRAD": "on", "CLOUDDETECT_WINOGRAD_MIN_MEMORY_BYTES": str(2**30)}
    settings = Settings.load(environ=env, winograd="false")
    assert (settings.winograd, settings.winograd_min_memory_bytes) == ("off", 2**30)


def test_flags_override_environment() -> None:
    settings = Settings.load(environ={"CLOUDDETECT_PORT": "6000"}, port=7000, threads=None)
    assert settings.port == 7000 and settings.threads == Settings().threads


@pytest.mark.parametrize(
    ("env", "fragment"),
    [({"CLOUDDETECT_PORT": "http"}, "CLOUDDETECT_PORT"), ({"CLOUDDETECT_PORT": "80"}, "above 1024"),
     ({"CLOUDDETECT_WINOGRAD": "maybe"}, "winograd must be one of auto, on, off"),
     ({"CLOUDDETECT_WINOGRAD_MIN_MEMORY_BYTES": "0"}, "winograd_min_memory_bytes"),
     ({"CLOUDDETECT_THREADS": "0"}, "threads"),
     ({"CLOUDDETECT_HEADER_TIMEOUT_S": "0"}, "header_timeout_s"),
     ({"CLOUDDETECT_MAX_RECEIVING_BODY_BYTES": "1000"}, "max_receiving_body_bytes must be at least max_body_bytes")],
)
def test_bad_values_are_refused_with_their_name(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Settings.load(environ=env)


def test_engine_and_precision_are_checked() -> None:
    chosen = Settings.load(environ={"CLOUDDETECT_ENGINE": "openvino", "CLOUDDETECT_PRECISION": "bf16"})
    assert (chosen.engine, chosen.precision) == ("openvino", "bf16")
    with pytest.raises(ValueError, match="engine must be one of auto, opencv, openvino"):
        Settings.load(environ={"CLOUDDETECT_ENGINE": "tensorrt"})
    with pytest.raises(ValueError, match="precision must be one of f32, bf16"):
        Settings.load(environ={"CLOUDDETECT_ENGINE": "openvino", "CLOUDDETECT_PRECISION": "int8"})
    with pytest.raises(ValueError, match="needs engine openvino"):
        Settings.load(environ={"CLOUDDETECT_PRECISION": "bf16"})
