"""The report's written discussion: built from the measured values, within its word limits, whatever is missing.

Experiments are made from the recorded run (``recorded/one-pod``) with other figures, as the lab would have written
them; fault results are written in the format of ``clouddetect lab faults``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from clouddetect.lab.capacity.evidence import EvidenceSettings, Snapshot, bounds, evidence
from clouddetect.lab.capacity.results import Experiment, RunRecord
from clouddetect.lab.capacity.targets import PodMetrics
from clouddetect.lab.cli import lab
from clouddetect.lab.report import write as report
from clouddetect.lab.report.analysis import ASSIGNMENT_PODS, REQUEST_BYTES, gather

RECORDED = Path(__file__).parents[1] / "recorded" / "one-pod"
OBSERVATIONS_MAX_WORDS = 1000
CHALLENGES_MAX_WORDS = 500
TOTAL_MAX_WORDS = 1500
MIB = 1024 * 1024
LINK = {"rtt_ms": 20.0, "bandwidth_mbit": 100.0, "method": "network namespace + veth"}


@pytest.fixture
def recorded_run() -> RunRecord:
    [run] = Experiment.load(RECORDED).runs
    return run


def experiment(directory: Path, runs: list[RunRecord], client_link: dict | None = None) -> Path:
    recorded = Experiment.load(RECORDED)
    made = Experiment.open(directory, {**recorded.conditions, "client_link": client_link}, recorded.environment)
    for run in runs:
        made.add(run)
    return directory


def scaled(run: RunRecord, location: str, pods: int, repeat: int, efficiency: float = 0.95) -> RunRecord:
    """The recorded run as if measured at ``pods`` pods: throughput and users scaled, requests spread unevenly."""
    rps = (run.saturation_rps or 0) * (1 if pods == 1 else pods * efficiency) * (1 + 0.02 * repeat)
    names = [f"pod-{i}" for i in range(pods)]
    return dataclasses.replace(
        run, client_location=location, pods=pods, repeat=repeat, pod_names=names, saturation_rps=rps,
        rps=rps, max_users=round(run.max_users * rps / (run.saturation_rps or 1)),
        pod_requests={name: 100 + 40 * i for i, name in enumerate(names)},
    )


def full_table(run: RunRecord, directory: Path) -> list[Path]:
    """Master and remote, 1/2/4/8 pods, three repeats each: the assignment's whole table."""
    return [experiment(directory / location, [scaled(run, location, pods, repeat) for pods in ASSIGNMENT_PODS
                                              for repeat in (1, 2, 3)], LINK if location == "remote" else None)
            for location in ("master", "remote")]


def fault_file(directory: Path, fault: str, **detail: object) -> Path:
    """A ``clouddetect lab faults`` result (samples and outcomes left short)."""
    path = directory / f"fault-{fault}.json"
    path.write_text(json.dumps({
        "fault": fault, **detail, "replicas": 4, "recorded_at": "2026-11-25T16:00:00+00:00",
        "settings": {"users": 6, "before_s": 10.0, "after_s": 5.0, "recovery_timeout_s": 600.0,
                     "request_timeout_s": 30.0, "poll_interval_s": 0.5},
        "requests": 120, "failed_requests": 3, "failures_by_kind": {"ConnectionError": 3}, "first_failure_s": 0.2,
        "last_failure_s": 1.4, "requests_per_s_before": 4.1, "capacity_back_s": 12.5, "samples": [], "outcomes": [],
    }))
    return path


def discussion(directories: list[Path], faults: list[Path] | None = None) -> list[report.Block]:
    return report.discussion(gather([Experiment.load(d) for d in directories], faults or []))


def text(blocks: list[report.Block]) -> str:
    return "\n".join(b.text for b in blocks if isinstance(b, report.Paragraph))


def test_the_discussion_keeps_within_its_word_limits(recorded_run: RunRecord, tmp_path: Path) -> None:
    faults = [fault_file(tmp_path, "pod-delete", pod="clouddetect-abc"), fault_file(tmp_path, "rollout-restart"),
              fault_file(tmp_path, "node-loss", node="worker-2", pods_on_node=2, endpoints_off_lost_node_s=8.0,
                         rescheduled_s=40.0)]
    for directories in ([RECORDED], full_table(recorded_run, tmp_path)):
        blocks = report.build([Experiment.load(d) for d in directories], tmp_path / "report", faults)
        observations, challenges = report.words(blocks, report.OBSERVATIONS), report.words(blocks, report.CHALLENGES)
        assert 300 < observations <= OBSERVATIONS_MAX_WORDS
        assert 200 < challenges <= CHALLENGES_MAX_WORDS
        assert report.words(blocks) <= TOTAL_MAX_WORDS


def test_scaling_is_told_from_the_measured_throughputs(recorded_run: RunRecord, tmp_path: Path) -> None:
    master, _ = full_table(recorded_run, tmp_path)
    said = text(discussion([master]))
    runs = Experiment.load(master).runs
    one = [r.saturation_rps for r in runs if r.pods == 1]
    eight = [r.saturation_rps for r in runs if r.pods == 8]
    efficiency = (sum(eight) / 3) / (8 * sum(one) / 3)
    assert (f"saturation throughput went from {sum(one) / 3:.1f} requests/s at 1 pod to {sum(eight) / 3:.1f} at "
            f"8 pods, a scaling efficiency of {efficiency:.2f} (close to linear)") in said
    assert "The remote set is missing from these results" in said

    slower = tmp_path / "slower"
    experiment(slower, [scaled(recorded_run, "master", pods, 1, efficiency=0.5) for pods in ASSIGNMENT_PODS])
    assert "(below linear)" in text(discussion([slower]))


def test_missing_pod_counts_and_locations_are_named(recorded_run: RunRecord, tmp_path: Path) -> None:
    said = text(discussion([RECORDED]))
    assert "only 1 pod was measured, so scaling cannot be read" in said
    assert "No runs with 2, 4 and 8 pods were recorded from the master." in said
    assert "Every run here had one pod" in said
    remote = experiment(tmp_path / "remote", [scaled(recorded_run, "remote", 4, 1)], LINK)
    said = text(discussion([remote]))
    assert "The master set is missing" in said and "No runs with 1, 2 and 8 pods" in said


def test_master_and_remote_are_compared_with_the_recorded_link(recorded_run: RunRecord, tmp_path: Path) -> None:
    master, remote = full_table(recorded_run, tmp_path)
    said = text(discussion([master, remote]))
    users = {loc: sum(r.max_users for r in Experiment.load(d).runs if r.pods == 8) / 3
             for loc, d in (("master", master), ("remote", remote))}
    shown = {loc: f"{u:.0f}" if u.is_integer() else f"{u:.1f}" for loc, u in users.items()}
    assert f"At 8 pods the remote client held {shown['remote']} users against {shown['master']} from the master" in said
    assert "from the master (1.00 ×, within the spread of the repeats)" in said
    assert "The remote client ran behind a simulated link of 20 ms round trip and 100 Mbit/s each way." in said
    load = Experiment.load(RECORDED).environment["load_generator"]["load_average_1m"]
    assert (f"a 1-minute load average of {load:.1f} when the master set started and {load:.1f} when the remote set "
            "started") in said
    rps = sum(r.saturation_rps or 0 for r in Experiment.load(remote).runs if r.pods == 8) / 3
    needed = rps * REQUEST_BYTES * 8 / 1e6
    assert f"needs about {needed:.1f} Mbit/s" in said and "the link has room" in said

    narrow = experiment(tmp_path / "narrow", [dataclasses.replace(scaled(recorded_run, "remote", 8, repeat),
                                                                  max_users=10 + repeat) for repeat in (1, 2, 3)],
                        {**LINK, "bandwidth_mbit": needed / 2})
    said = text(discussion([master, narrow]))
    assert "the link, not the pods, is the limit here" in said
    assert f"At 8 pods the remote client held 12 users against {shown['master']} from the master" in said
    assert "within the spread of the repeats" not in said


def test_per_pod_balance_is_read_from_each_pods_request_count(recorded_run: RunRecord, tmp_path: Path) -> None:
    uneven = dataclasses.replace(scaled(recorded_run, "master", 2, 1), pod_requests={"a": 300, "b": 100})
    said = text(discussion([experiment(tmp_path / "two", [uneven])]))
    assert "At 2 pods (client on master) the busiest pod answered 1.50 × its even share and the quietest 0.50 ×" in said
    idle = dataclasses.replace(uneven, pod_requests={"a": 400})
    assert "1 answered nothing" in text(discussion([experiment(tmp_path / "idle", [idle])]))


def test_the_timeout_bound_is_computed_from_throughput_and_timeout(recorded_run: RunRecord, tmp_path: Path) -> None:
    said = text(discussion([RECORDED]))
    rps = recorded_run.saturation_rps or 0
    bound = 0.75 * rps * recorded_run.timeout_s
    assert (f"{recorded_run.max_users} users held, {recorded_run.max_users / bound:.2f} of 0.75 × {rps:.2f} "
            f"requests/s × 30 s = {bound:.0f}") in said


def test_faults_under_load_are_told_when_given_and_missing_ones_are_said(tmp_path: Path) -> None:
    assert "No fault under load was measured for this report" in text(discussion([RECORDED]))
    faults = [fault_file(tmp_path, "pod-delete", pod="clouddetect-abc"),
              fault_file(tmp_path, "node-loss", node="worker-2", pods_on_node=2, endpoints_off_lost_node_s=8.0)]
    said = text(discussion([RECORDED], faults))
    assert ("Deleting pod clouddetect-abc under 6 users failed 3 of 120 requests (3 × ConnectionError); all 4 pods "
            "served again after 12.5 s.") in said
    assert ("Losing node worker-2 with 2 pods under 6 users failed 3 of 120 requests (3 × ConnectionError); its "
            "endpoints left the Service after 8.0 s and all 4 pods served again after 12.5 s.") in said
    assert "No fault under load" not in said


def test_overload_evidence_comes_from_the_breaking_points(recorded_run: RunRecord, tmp_path: Path) -> None:
    refused = dataclasses.replace(recorded_run, breaking_failure_kinds={"HTTP 503": 7, "timeout": 2})
    said = text(discussion([experiment(tmp_path / "refused", [refused])]))
    assert "The searches ended on 7 × HTTP 503; 2 × timeout at their breaking points" in said
    assert "503s come from the admission bound" in said
    queued = (recorded_run.rps or 0) * (recorded_run.avg_ms or 0) / 1000 - 1
    assert f"about {queued:.0f} requests were waiting at any moment" in said


def test_every_sentence_is_a_whole_sentence(recorded_run: RunRecord, tmp_path: Path) -> None:
    """No template variable left unrendered, no doubled spaces or punctuation from skipped branches."""
    for directories in ([RECORDED], full_table(recorded_run, tmp_path)):
        said = text(discussion(directories))
        assert not re.search(r"\{|\}|  |\s[.,;:]|\.\.|\?", said), said


def test_report_command_writes_the_title_block_and_says_when_chromium_is_missing(tmp_path: Path) -> None:
    runner = CliRunner()
    title = ["--title", "Capacity of a detector", "--author", "A. Student", "--line", "Cloud Computing, 2026"]
    done = runner.invoke(lab, ["report", str(RECORDED), "--out", str(tmp_path), "--no-pdf", *title])
    assert done.exit_code == 0, done.output
    written = (tmp_path / "report.md").read_text()
    assert written.startswith("# Capacity of a detector\n\nA. Student\n\nCloud Computing, 2026\n")
    assert not (tmp_path / "report.pdf").exists()
    escaped = runner.invoke(lab, ["report", str(RECORDED), "--out", str(tmp_path), "--no-pdf", "--title", "A <b>"])
    assert escaped.exit_code == 0 and "<h1>A &lt;b&gt;</h1>" in (tmp_path / "report.html").read_text()
    missing = runner.invoke(lab, ["report", str(RECORDED), "--out", str(tmp_path), "--chromium", "no-such-chromium"])
    assert missing.exit_code != 0 and "no-such-chromium not found on PATH" in missing.output
    assert "apt-get install chromium fonts-liberation" in missing.output


def test_a_file_that_is_not_a_fault_result_is_a_clear_error(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1, 2]")
    done = CliRunner().invoke(lab, ["report", str(RECORDED), "--out", str(tmp_path), "--no-pdf",
                                    "--faults", str(wrong)])
    assert done.exit_code != 0 and f"{wrong} is not a `clouddetect lab faults` result" in done.output


def bound_by(run: RunRecord, used_cores: float, limit_cores: float = 0.15, throttled: float = 0.95,
             client_cpu: float = 0.2, peak_mib: float | None = 160) -> RunRecord:
    """The run with evidence as the lab measures it over a 20 s hold (its pods at ``used_cores`` each)."""
    hold_s = 20.0
    peak = None if peak_mib is None else peak_mib * MIB
    before = {name: PodMetrics({}, 0, 0.0, 0, 0, peak, limit_cores, 512 * MIB) for name in run.pod_names}
    after = {name: PodMetrics({}, 0, used_cores * hold_s, 200, round(200 * throttled), peak, limit_cores, 512 * MIB)
             for name in run.pod_names}
    found = evidence(Snapshot(0.0, before, {1: 0.0}, None, None, 0.0, 0.0),
                     Snapshot(hold_s, after, {1: client_cpu * hold_s}, None, None, 30.0, 40.0), None)
    flags = bounds(found, True, EvidenceSettings())
    return dataclasses.replace(run, evidence={**found, **flags}, client_bound=flags["client_bound"],
                               machine_bound=flags["machine_bound"])


def test_what_bound_the_pods_is_told_from_their_cgroups_not_inferred(recorded_run: RunRecord, tmp_path: Path) -> None:
    runs = [bound_by(scaled(recorded_run, "master", pods, repeat), 0.149) for pods in ASSIGNMENT_PODS
            for repeat in (1, 2)]
    said = text(discussion([experiment(tmp_path / "master", runs)]))
    assert ("What bound the pods is measured, not inferred: at capacity the pods used on average 99 % or more of "
            "their CPU limit (0.15 cores) and their quota stopped them in 95 % of CFS periods, while no pod's memory "
            "passed 160 of 512 MiB (its peak since it started): inference is CPU-bound") in said
    assert "not the service's alone" not in said


def test_pods_whose_memory_peak_is_not_kept_are_told_without_it(recorded_run: RunRecord, tmp_path: Path) -> None:
    """cgroup v2 keeps memory.peak only from Linux 5.19."""
    runs = [bound_by(scaled(recorded_run, "master", pods, 1), 0.149, peak_mib=None) for pods in ASSIGNMENT_PODS]
    said = text(discussion([experiment(tmp_path / "master", runs)]))
    assert "of CFS periods: inference is CPU-bound" in said


def test_a_machine_bound_configuration_is_said_in_words_and_claims_no_efficiency(recorded_run: RunRecord,
                                                                                 tmp_path: Path) -> None:
    runs = [bound_by(scaled(recorded_run, "master", pods, 1), 0.149 if pods < 8 else 0.1) for pods in ASSIGNMENT_PODS]
    directory = experiment(tmp_path / "master", runs)
    facts = gather([Experiment.load(directory)])
    said = text(report.discussion(facts))
    assert ("At 8 pods with the client on master the figures are not the service's alone: the pods used 0.10 of "
            "their 0.15 CPU on average though saturated: their quota did not bind, the nodes' CPU or something "
            "outside the pods did (the load generator's machine was 75 % busy). No scaling efficiency is claimed for "
            "it.") in said
    efficiency = {row[0]: row[3] for row in report.capacity_table(facts).rows}
    assert efficiency == {"1": "1.00", "2": "0.95", "4": "0.95", "8": "-"}
    bound = {row[0]: row[-1] for row in report.evidence_table(facts).rows}
    assert bound == {"1": "no", "2": "no", "4": "no", "8": "machine (1 of 1)"}


def test_a_busy_load_generator_makes_its_configuration_client_bound(recorded_run: RunRecord, tmp_path: Path) -> None:
    runs = [bound_by(scaled(recorded_run, "master", pods, 1), 0.149, client_cpu=0.9 if pods == 4 else 0.2)
            for pods in ASSIGNMENT_PODS]
    facts = gather([Experiment.load(experiment(tmp_path / "master", runs))])
    said = text(report.discussion(facts))
    assert "At 4 pods with the client on master the figures are not the service's alone: a Locust process used 90%" \
        in said
    row = next(row for row in report.evidence_table(facts).rows if row[0] == "4")
    assert row[2:] == ["0.149 ± 0.000 of 0.15", "95% ± 0", "160 of 512 MiB", "90.0%", "-", "75% ± 0", "client (1 of 1)"]
