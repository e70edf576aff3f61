"""One load step: Locust, headless, in a process of its own, driven by the lab's load shape.

Locust monkey-patches the process that imports it, so the lab never imports it: it starts
``python -m locust -f locustfile.py,shape.py --headless ...`` and reads back the outcome file the shape writes.
Locust's output goes to a log file beside its CSVs; progress lines and Locust's warnings are echoed.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import clouddetect.loadtest
from clouddetect.loadtest.settings import (
    HOLD_STARTED,
    LOCUSTFILE_FLAGS,
    PROGRESS_PREFIX,
    SHAPE_SETTINGS,
    STEP_SETTINGS,
    STOPPING,
    LoadSettings,
    StepPlan,
    locust_flag,
)
from clouddetect.settings_fields import arguments

LOCUSTFILE = Path(clouddetect.loadtest.__file__).with_name("locustfile.py")
SHAPE_FILE = LOCUSTFILE.with_name("shape.py")
ECHOED_LOG_LEVELS = ("/WARNING/", "/ERROR/", "/CRITICAL/")
LOCUST_EXIT_TIMEOUT_S = 60.0
PHASES = (HOLD_STARTED, STOPPING)
# Told each phase line as it comes, with Locust's process (its workers are its children).
OnPhase = Callable[[str, psutil.Process], None]


class LoadError(RuntimeError):
    """A Locust run ended without an outcome."""


@dataclass(frozen=True)
class StepOutcome:
    users: int
    first_failure_users: int | None
    peak_users: int
    held_s: float | None
    requests: int
    failures: int
    failure_kinds: dict[str, int]
    avg_ms: float | None
    median_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    rps: float
    requests_sent: int
    requests_judged: int
    start_users: int = 0
    saturation_rps: float | None = None
    stable: bool | None = None
    window_ms: list[float | None] = field(default_factory=list)
    name: str = ""
    # Failed requests sent from when a jump was decided until it was done: they met its burst, and do not count.
    burst_failures: int = 0

    @property
    def passed(self) -> bool:
        """Held with no counted failure (one judged after the step stopped included), and every request sent was
        judged (none left unanswered when the step ended)."""
        return (self.first_failure_users is None and self.failures == 0 and self.held_s is not None
                and self.requests_sent == self.requests_judged)


def locust_command(url: str, step: StepPlan, load: LoadSettings, prefix: Path) -> list[str]:
    command = [
        sys.executable, "-m", "locust", "-f", f"{LOCUSTFILE},{SHAPE_FILE}", "--headless", "--host", url,
        "--csv", str(prefix), "--csv-full-history", "--only-summary", "--exit-code-on-error", "0",
        "--stop-timeout", str(math.ceil(load.stop_timeout_s)),  # whole seconds only
        *arguments(load, locust_flag, [*LOCUSTFILE_FLAGS, *SHAPE_SETTINGS]),
        *arguments(step, locust_flag, STEP_SETTINGS), "--lab-outcome", str(outcome_path(prefix)),
    ]
    if load.locust_processes:
        # Locust's default master port is shared by every Locust on the machine: take a free one.
        port = str(free_port())
        command += ["--processes", str(load.locust_processes), "--master-bind-port", port, "--master-port", port]
    return command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def outcome_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + "_outcome.json")


def run_step(url: str, step: StepPlan, load: LoadSettings, prefix: Path, echo: Callable[[str], None],
             on_phase: OnPhase | None = None) -> StepOutcome:
    """Ramp to the step's users and hold them, stopping at the first failure; raw files start with ``prefix``.
    ``on_phase`` hears when the hold starts and when the step stops, while Locust still runs."""
    outcome_file = outcome_path(prefix)
    outcome_file.unlink(missing_ok=True)
    log_path = prefix.with_name(prefix.name + ".log")
    command = locust_command(url, step, load, prefix)
    with log_path.open("w") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        try:
            _relay(process, log, echo, on_phase)
        finally:
            # Ctrl-C reaches Locust too; let it write its files before the lab goes on or gives up.
            code = process.wait(timeout=LOCUST_EXIT_TIMEOUT_S)
    if not outcome_file.exists():
        raise LoadError(f"Locust exited with {code} without an outcome; see {log_path}")
    return StepOutcome(users=step.users, name=step.name, **json.loads(outcome_file.read_text()))


def phase_of(progress: str) -> str | None:
    """The phase a progress line announces ("12 s, holding 40 users"), if any."""
    words = progress.replace(";", " ").replace(",", " ").split()
    return next((phase for phase in PHASES if phase in words[2:3]), None)


def _relay(process: subprocess.Popen[str], log: Any, echo: Callable[[str], None], on_phase: OnPhase | None) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        log.write(line)
        if line.startswith(PROGRESS_PREFIX):
            progress = line[len(PROGRESS_PREFIX):].strip()
            echo(progress)
            if on_phase and (phase := phase_of(progress)):
                on_phase(phase, psutil.Process(process.pid))
        elif any(level in line for level in ECHOED_LOG_LEVELS):
            echo(line.strip())
