"""Schemathesis against a real ``clouddetect serve`` on loopback, from the served OpenAPI document.

Its built-in checks (no 5xx, documented status codes, content types, headers and bodies, negative data rejected,
unsupported methods answered 405, ...) run on a bounded number of cases per operation. The document's examples
are joined by real test images, sent in both accepted forms. The run's report lands in
``test-artifacts/schemathesis/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from openapi_check import SERVICE_SERVER

from support import LiveServer, request_body

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "schemathesis"
EXAMPLE_IMAGES = 4
MAX_EXAMPLES_PER_OPERATION = 200
REQUEST_TIMEOUT_S = 30
RUN_TIMEOUT_S = 900
# A schema cannot say that an image decodes, so schema-valid bodies are often rightly refused (400 not_an_image):
# the check that expects them accepted does not apply to this API.
NOT_APPLICABLE_CHECKS = ("positive_data_acceptance",)


def with_real_images(document: dict, images: list[Path]) -> dict:
    """The served document with real test images added to the detection request's examples, in both forms."""
    body = document["paths"]["/api/object_detection"]["post"]["requestBody"]["content"]["application/json"]
    for path in images:
        payload = request_body(path, f"example-{path.stem}")
        body["examples"][path.stem] = {"summary": path.name, "value": payload}
        body["examples"][f"{path.stem}-encoded-twice"] = {"summary": f"{path.name}, encoded twice",
                                                         "value": json.dumps(payload)}
    return document


def test_schemathesis_finds_nothing(server: LiveServer, images: list[Path], tmp_path: Path) -> None:
    document = requests.get(server.url + "/openapi.json", timeout=REQUEST_TIMEOUT_S).json()
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(with_real_images(document, images[:EXAMPLE_IMAGES])))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = ARTIFACTS / "report.json"
    command = [
        str(Path(sys.executable).with_name("st")), "run", str(schema), "--url", server.url,
        "--checks", "all", "--exclude-checks", ",".join(NOT_APPLICABLE_CHECKS),
        "--max-examples", str(MAX_EXAMPLES_PER_OPERATION), "--request-timeout", str(REQUEST_TIMEOUT_S),
        "--workers", "2", "--report", "json", "--report-json-path", str(report),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    (ARTIFACTS / "run.txt").write_text(run.stdout + run.stderr)
    summary = json.loads(report.read_text())
    print(f"schemathesis: {summary['test_cases']['generated']} cases generated, seed {summary['seed']}")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr
    assert summary["operations"]["tested"] == len(document["paths"])
    assert summary["phases"]["examples"]["status"] == "success"
    assert f"request id=example-{images[0].stem} status=200" in server.log(), "the real images were detected"


def test_live_server_answers_are_the_ones_checked_against_the_document(server: LiveServer) -> None:
    answer = requests.get(server.url + "/healthz", timeout=REQUEST_TIMEOUT_S)
    assert answer.headers["Server"].startswith(SERVICE_SERVER), "tests/openapi_check.py would skip this answer"
