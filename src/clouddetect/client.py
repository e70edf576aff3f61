"""A client that sends every image of a folder to the service, N at a time, and checks each answer."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from clouddetect.images import encode_file, image_files
from clouddetect.verdicts import ENDPOINT, MALFORMED, TIMEOUT_HEADER, WRONG_ID, failure_kind, response_problem


@dataclass(frozen=True)
class ImageOutcome:
    image: Path
    status: int | None
    body: Any
    latency_s: float
    problem: str | None


@dataclass(frozen=True)
class RunSummary:
    images: int
    ok: int
    failed: int
    objects: int
    elapsed_s: float
    mean_latency_s: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed_s if self.elapsed_s else 0.0


def wait_ready(
    base_url: str, timeout_s: float, poll_interval_s: float = 0.1, still_starting: Callable[[], bool] = lambda: True
) -> None:
    """Poll ``/readyz`` until the service is warmed up; ``still_starting`` lets a caller give up on a dead server."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and still_starting():
        try:
            if requests.get(base_url.rstrip("/") + "/readyz", timeout=poll_interval_s + 1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # refused while binding, slow while loading
            pass
        time.sleep(poll_interval_s)
    raise TimeoutError(f"{base_url} did not turn ready within {timeout_s} s")


def detect_one(session: requests.Session, url: str, image: Path, timeout_s: float) -> ImageOutcome:
    request_id = str(uuid.uuid4())
    started = time.perf_counter()
    try:
        response = session.post(url, json={"id": request_id, "image": encode_file(image)}, timeout=timeout_s,
                                headers={TIMEOUT_HEADER: f"{timeout_s:g}"})
    except (requests.RequestException, OSError) as exc:
        latency_s = time.perf_counter() - started
        kind = failure_kind(0, None, request_id, latency_s, timeout_s, exc)
        return ImageOutcome(image, None, None, latency_s, f"{kind} ({exc})")
    latency_s = time.perf_counter() - started
    kind = failure_kind(response.status_code, response.text, request_id, latency_s, timeout_s)
    body = _json_or_none(response)
    if kind in (MALFORMED, WRONG_ID):  # say what is wrong with it
        kind = f"{kind}: {response_problem(body, request_id)}"
    return ImageOutcome(image, response.status_code, body, latency_s, kind)


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def run(
    base_url: str, folder: Path, concurrency: int, timeout_s: float, on_outcome: Callable[[ImageOutcome], None]
) -> RunSummary:
    url = base_url.rstrip("/") + ENDPOINT
    files = image_files(folder)
    outcomes: list[ImageOutcome] = []
    started = time.perf_counter()
    with requests.Session() as session, ThreadPoolExecutor(max_workers=concurrency) as pool:
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=concurrency)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        for outcome in pool.map(lambda f: detect_one(session, url, f, timeout_s), files):
            outcomes.append(outcome)
            on_outcome(outcome)
    ok = [o for o in outcomes if o.problem is None]
    return RunSummary(
        images=len(outcomes),
        ok=len(ok),
        failed=len(outcomes) - len(ok),
        objects=sum(len(o.body["objects"]) for o in ok),
        elapsed_s=time.perf_counter() - started,
        mean_latency_s=statistics.fmean(o.latency_s for o in outcomes),
    )
