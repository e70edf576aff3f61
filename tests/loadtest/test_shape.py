"""The load shape's judgement, run by Locust itself against a scripted server on loopback.

The server fails exactly the requests a rule is about, at a chosen moment and after a chosen delay, so each test
sees one rule decide a step: a failure that met a jump's burst does not count, and one judged after the step
stopped does.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from clouddetect.lab.capacity.locust_runs import StepOutcome, run_step
from clouddetect.loadtest.settings import LoadSettings, StepPlan
from support import http_server, send_json

pytestmark = pytest.mark.slow
TIMEOUT_S = 10.0
SERVICE_S = 0.05  # each good answer's time: keeps a few users from spinning the machine


@dataclass(frozen=True)
class Failing:
    """Answers 503 after ``delay_s`` to requests arriving between ``from_s`` and ``until_s`` after the first."""

    from_s: float
    until_s: float
    delay_s: float


def scripted_handler(failing: Failing) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()
    first: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                if not first:
                    first.append(time.monotonic())
                since_first_s = time.monotonic() - first[0]
            if failing.from_s <= since_first_s < failing.until_s:
                time.sleep(failing.delay_s)
                send_json(self, 503, b"")
            else:
                time.sleep(SERVICE_S)
                send_json(self, 200, json.dumps({"id": body["id"], "objects": []}).encode())

        def log_message(self, *_args: object) -> None:
            pass

    return Handler


def step(failing: Failing, plan: StepPlan, images: list[Path], tmp_path: Path) -> StepOutcome:
    load = LoadSettings(timeout_s=TIMEOUT_S, images=images[0].parent, progress_interval_s=1.0, max_extension_s=1.0)
    with http_server(scripted_handler(failing)) as url:
        return run_step(url, plan, load, tmp_path / plan.name, lambda _line: None)


def test_failures_of_a_jumps_burst_judged_after_the_target_is_reached_neither_count_nor_reach_the_hold(
    tmp_path: Path, images: list[Path]
) -> None:
    # Three users jump in at once; their first requests fail 4 s later, after the ramp has reached four users.
    burst = Failing(from_s=0.0, until_s=0.5, delay_s=4.0)
    outcome = step(burst, StepPlan("confirm-1", users=4, spawn_rate=1.0, hold_s=2.0, start_users=3), images,
                   tmp_path)
    assert outcome.burst_failures >= 1
    assert outcome.failures == 0 and outcome.failure_kinds == {}  # the hold began once the burst was judged
    assert outcome.first_failure_users is None
    assert outcome.passed


def test_a_failure_judged_after_the_step_stopped_fails_it_at_the_users_it_was_sent_under(
    tmp_path: Path, images: list[Path]
) -> None:
    # The first user's first request fails 8 s after it was sent: after the ramp to three users at 1 user/s, the 1 s
    # hold and its 1 s extension are over.
    late = Failing(from_s=0.0, until_s=0.5, delay_s=8.0)
    outcome = step(late, StepPlan("confirm-1", users=3, spawn_rate=1.0, hold_s=1.0), images, tmp_path)
    assert outcome.held_s is not None
    assert outcome.burst_failures == 0  # no jump, no burst
    assert outcome.first_failure_users == 1
    assert not outcome.passed
    assert outcome.requests_sent == outcome.requests_judged
