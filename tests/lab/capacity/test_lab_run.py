"""``clouddetect lab run --url`` for real against a local server made to fail on purpose, then ``lab report``.

The lab runs in a process of its own (it starts Locust, which monkey-patches its process), as a user would run it.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clouddetect import machine
from support import LiveServer, live_server

pytestmark = pytest.mark.slow
LAB_TIMEOUT_S = 300.0
POD_NAME = "lab-test-pod"


def lab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clouddetect", "lab", *args], capture_output=True, text=True,
                          timeout=LAB_TIMEOUT_S, check=check)


def lab_run_args(server: LiveServer, out: Path, images: list[Path], *flags: str) -> list[str]:
    return ["run", "--url", server.url, "--out", str(out), "--images", str(images[0].parent), "--hold-s", "3",
            "--max-extension-s", "3", "--slo-hold-s", "3", "--poll-interval-s", "0.2", "--progress-interval-s", "1",
            *flags]


def runs(out: Path) -> list[dict]:
    return json.loads((out / "runs.json").read_text()) if (out / "runs.json").exists() else []


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory: pytest.TempPathFactory, images: list[Path]) -> tuple[Path, str]:
    """An experiment of two repeats against a server that answers 503 to a third request in flight.

    The first repeat is measured alone, the second by running again on the same directory (resuming).
    """
    tmp_path = tmp_path_factory.mktemp("overloaded")
    out = tmp_path / "experiment"
    with live_server(tmp_path, "--max-waiting-requests", "2", env={"POD_NAME": POD_NAME}) as server:
        lab(*lab_run_args(server, out, images, "--repeats", "1"))
        resumed = lab(*lab_run_args(server, out, images, "--repeats", "2"))
    return out, resumed.stdout


def outcomes(out: Path, repeat: int) -> dict[str, dict]:
    raw = out / "raw" / f"master-pods-1-repeat-{repeat}"
    return {path.name.removesuffix("_outcome.json"): json.loads(path.read_text())
            for path in raw.glob("*_outcome.json")}


def test_breaking_point_of_a_server_that_takes_two_requests_at_a_time(overloaded: tuple[Path, str]) -> None:
    out, _ = overloaded
    for run in runs(out):
        assert run["breaking_users"] >= 3
        assert "HTTP 503" in run["breaking_failure_kinds"]
        assert run["max_users"] == 2
        assert run["confirmed_users_tried"][-1] == 2
        assert run["failures"] == 0 and run["failure_kinds"] == {}
        assert run["requests"] > 0 and 0 < run["median_ms"] <= run["p95_ms"] <= run["p99_ms"]
        assert run["rps"] > 0
        # Every request of the confirmed run was answered by the one instance, named as the server names itself.
        assert run["pod_names"] == [POD_NAME]
        assert run["pod_requests"][POD_NAME] >= run["requests"]


def test_every_request_sent_is_judged_in_every_step_and_every_run(overloaded: tuple[Path, str]) -> None:
    out, _ = overloaded
    for run in runs(out):
        steps = outcomes(out, run["repeat"])
        assert {s["name"] for s in run["steps"]} == set(steps)
        for name, step in steps.items():
            assert step["requests_sent"] == step["requests_judged"] > 0, name
        assert run["requests_sent"] == run["requests_judged"] == sum(s["requests_sent"] for s in steps.values())
        # A step that stopped at its first failure still judged the requests then in flight: more than the one.
        assert steps["search"]["failures"] >= 1


def test_each_run_says_what_bound_it_over_its_hold(overloaded: tuple[Path, str]) -> None:
    """Read from the server's own /metrics and Locust's process while the accepted load was held."""
    out, stdout = overloaded
    experiment = json.loads((out / "experiment.json").read_text())
    node = experiment["environment"]["nodes"]["unknown"]  # a fixed URL does not say its node
    assert node["cpu_model"] == machine.cpu()["model"] and node["isa"] == machine.cpu()["isa"] and node["engines"]
    for run in runs(out):
        found = run["evidence"]
        assert 0 < found["held_s"] < run["held_s"] + 5
        pod = found["pods"][POD_NAME]
        assert pod["cpu_cores_used"] > 0 and pod["memory_peak_mib"] > 0 and pod["memory_limit_mib"] > 0
        assert 0 < found["client_cpu_core_share_max"] < 1
        assert found["link_utilisation_share"] is None  # no simulated link: its rate is unknown
        assert 0 < found["load_generator_machine_cpu_busy_share"] <= 1
        assert run["client_bound"] is False
        assert run["pod_nodes"] == {POD_NAME: None}
    assert "client CPU" in stdout


def test_a_failed_confirmation_steps_down_and_confirms_again(overloaded: tuple[Path, str]) -> None:
    out, _ = overloaded
    for run in runs(out):
        tried = run["confirmed_users_tried"]
        assert tried == sorted(tried, reverse=True) and tried[0] == run["breaking_users"] - 1
        for users in tried[:-1]:
            failed = json.loads((out / "raw" / f"master-pods-1-repeat-{run['repeat']}" /
                                 f"confirm-{tried.index(users) + 1}_outcome.json").read_text())
            assert failed["first_failure_users"] is not None and failed["failures"] > 0


def test_running_again_resumes_skipping_recorded_runs(overloaded: tuple[Path, str]) -> None:
    out, resumed_output = overloaded
    assert "1 runs already recorded" in resumed_output
    assert [r["repeat"] for r in runs(out)] == [1, 2]
    assert resumed_output.count("search to") == resumed_output.count("repeat 2/2, search to")


def test_raw_locust_files_and_tidy_table_of_every_run(overloaded: tuple[Path, str]) -> None:
    out, _ = overloaded
    for repeat in (1, 2):
        raw = out / "raw" / f"master-pods-1-repeat-{repeat}"
        for suffix in ("_stats.csv", "_stats_history.csv", "_failures.csv", "_outcome.json", ".log"):
            assert (raw / f"search{suffix}").exists()
    lines = (out / "runs.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("client_location,pods,repeat,")
    assert all(line.startswith(f"master,1,{r},") for r, line in zip((1, 2), lines[1:], strict=True))


def test_report_has_the_capacity_table_with_mean_and_std_and_the_plots(overloaded: tuple[Path, str]) -> None:
    out, _ = overloaded
    written = lab("report", str(out), "--no-pdf").stdout.split()
    avg = [r["avg_ms"] for r in runs(out)]
    report = (out / "report" / "report.md").read_text()
    expected_row = f"| 1 | 2 ± 0 (n=2) | {statistics.fmean(avg):.0f} ± {statistics.stdev(avg):.0f} ms (n=2) |"
    assert expected_row in report
    assert "| max users (timeout 30 s) (master) | mean response time (master) |" in report
    assert f"{POD_NAME}: " in report
    assert "<table>" in (out / "report" / "report.html").read_text()
    assert {Path(p).name for p in written if p.endswith(".png")} >= {"max_users_vs_pods.png",
                                                                    "response_time_vs_pods.png"}


def test_a_tiny_timeout_breaks_on_refusals_or_timeouts_and_confirms_fewer_users(tmp_path: Path,
                                                                                 images: list[Path]) -> None:
    out = tmp_path / "experiment"
    timeout_s = 3.0
    with live_server(tmp_path) as server:
        result = lab(*lab_run_args(server, out, images, "--repeats", "1", "--timeout-s", str(timeout_s),
                                   "--spawn-rate", "2", "--step-down-pct", "25", "--slo-p95-s", "1.5"))
    [run] = runs(out)
    assert "expected duration" in result.stdout and "the full table" in result.stdout
    # The users send their timeout: the service refuses (503) what it could not answer within it.
    assert run["breaking_failure_kinds"] and set(run["breaking_failure_kinds"]) <= {"HTTP 503", "timeout"}
    assert 1 <= run["max_users"] < run["breaking_users"]
    assert run["failures"] == 0 and run["p95_ms"] <= timeout_s * 1000
    assert run["requests_sent"] == run["requests_judged"] > 0
    # Refusals and timeouts mean the service was saturated: its throughput then is recorded.
    assert run["saturation_rps"] > 0
    assert run["slo_users"] is None or (run["slo_users"] <= run["max_users"] and run["slo_p95_ms"] <= 1500)
    experiment = json.loads((out / "experiment.json").read_text())
    assert experiment["timeout_s"] == timeout_s
    assert experiment["environment"]["code"]["package"]
    assert experiment["environment"]["client_network"]["interface"] == "lo"
    engine = experiment["environment"]["service"]["engine"]  # what /readyz says runs, and why
    assert engine.split(",")[0] in ("openvino/f32", "opencv/f32 Winograd on", "opencv/f32 Winograd off")
    assert "chosen by timing (opencv/f32 Winograd" in engine and "; openvino" in engine, "both engines timed"


def test_with_locust_worker_processes_every_request_is_still_judged(tmp_path: Path, images: list[Path]) -> None:
    out = tmp_path / "experiment"
    with live_server(tmp_path, "--max-waiting-requests", "2") as server:
        lab(*lab_run_args(server, out, images, "--repeats", "1", "--locust-processes", "2"))
    [run] = runs(out)
    assert run["max_users"] >= 1
    assert run["requests_sent"] == run["requests_judged"] > 0
    assert all(step["requests_sent"] == step["requests_judged"] for step in run["steps"])


def interruptible(command: list[str]) -> subprocess.Popen[str]:
    """``command`` started as from a terminal, where Ctrl-C interrupts it. A shell without job control starts its
    background commands with SIGINT ignored, and a child inherits that; a handled signal is reset at exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_interrupted_experiment_keeps_finished_runs_and_resumes(tmp_path: Path, images: list[Path]) -> None:
    out = tmp_path / "experiment"
    with live_server(tmp_path, "--max-waiting-requests", "2") as server:
        args = lab_run_args(server, out, images, "--repeats", "2")
        process = interruptible([sys.executable, "-m", "clouddetect", "lab", *args])
        deadline = time.monotonic() + LAB_TIMEOUT_S
        while not runs(out):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C does: the lab and its Locust both get it
        output, _ = process.communicate(timeout=LAB_TIMEOUT_S)
        assert process.returncode == 130, output
        assert "to resume" in output
        assert [r["repeat"] for r in runs(out)] == [1]
        lab(*args)
    assert [r["repeat"] for r in runs(out)] == [1, 2]


def test_a_directory_measured_under_other_conditions_is_refused(tmp_path: Path, images: list[Path]) -> None:
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps({"timeout_s": 10.0}))
    result = lab("run", "--url", "http://127.0.0.1:9", "--out", str(out), "--images", str(images[0].parent),
                 check=False)
    assert result.returncode != 0
    assert "timeout_s: recorded 10.0, asked 30.0" in result.stderr


def test_without_out_every_run_gets_a_new_directory(tmp_path: Path, images: list[Path]) -> None:
    with live_server(tmp_path, "--max-waiting-requests", "2") as server:
        args = [a for a in lab_run_args(server, tmp_path, images, "--repeats", "1", "--max-users", "2")
                if a not in ("--out", str(tmp_path))]
        for _ in range(2):
            subprocess.run([sys.executable, "-m", "clouddetect", "lab", *args], cwd=tmp_path, check=True,
                           capture_output=True, timeout=LAB_TIMEOUT_S)
    made = sorted((tmp_path / "results").iterdir())
    assert len(made) == 2 and all(len(runs(d)) == 1 for d in made)


def test_a_fixed_url_takes_one_pod_count(images: list[Path]) -> None:
    result = lab("run", "--url", "http://127.0.0.1:9", "--pods", "1,2", check=False)
    assert result.returncode != 0 and "cannot be scaled" in result.stderr
