"""``clouddetect lab run | report``: the capacity experiment as one command, and its report."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from clouddetect.images import default_folder, image_files
from clouddetect.lab.capacity.experiment import Plan, Runner, expected_run_s
from clouddetect.lab.capacity.host import client_network, code_version, load_generator
from clouddetect.lab.capacity.locust_runs import LoadError, LoadSettings
from clouddetect.lab.capacity.results import Experiment, ExperimentError
from clouddetect.lab.capacity.search import SearchSettings
from clouddetect.lab.capacity.targets import FixedUrl, Kubernetes, Platform, PlatformError
from clouddetect.lab.faults import faults
from clouddetect.lab.network.cli import link
from clouddetect.lab.network.link import client_link_conditions
from clouddetect.submission import bundle_command
from clouddetect.verdicts import DEFAULT_REQUEST_TIMEOUT_S

CLIENT_LOCATIONS = ("master", "remote")
DEFAULT_PODS = [1, 2, 4, 8]
DEFAULT_REPEATS = 3
HTTP_TIMEOUT_S = 10.0


def _pod_counts(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of pod counts") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("pod counts must be at least 1")
    return counts


@click.group()
def lab() -> None:
    """Capacity experiments: how many users each pod count carries without a failed request."""


@lab.command("run")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Experiment directory; an existing one resumes, skipping recorded runs. "
                   "[default: a new results/lab-<UTC time>]")
@click.option("--url", help="Measure this fixed endpoint (one server, a container, ...) instead of scaling pods.")
@click.option("--pods", callback=_pod_counts,
              help="Pod counts to measure, comma-separated [default: 1,2,4,8; with --url: 1, as a label].")
@click.option("--repeats", default=DEFAULT_REPEATS, show_default=True, type=click.IntRange(min=1),
              help="Runs per pod count.")
@click.option("--client-location", type=click.Choice(CLIENT_LOCATIONS), default="master", show_default=True,
              help="Where this load generator runs; a label that keeps both sets apart in one report.")
@click.option("--timeout-s", default=DEFAULT_REQUEST_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="An answer slower than this is a failed request.")
@click.option("--spawn-rate", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Users started per second while searching for the breaking point.")
@click.option("--confirm-spawn-rate", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Users started per second when confirming a user count.")
@click.option("--hold-s", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Time a confirmed user count must run without a failure, its response times stable.")
@click.option("--hold-windows", default=LoadSettings.hold_windows, show_default=True, type=click.IntRange(min=1),
              help="Windows the hold is split into to judge whether its response times are stable.")
@click.option("--stable-tolerance-pct", default=LoadSettings.stable_tolerance_pct, show_default=True,
              type=click.FloatRange(min=0),
              help="Most a window's mean response time may differ from the hold's (and the trend may rise).")
@click.option("--max-extension-s", default=LoadSettings.max_extension_s, show_default=True,
              type=click.FloatRange(min=0),
              help="Longest a hold is extended while its response times are not stable.")
@click.option("--start-fraction", default=SearchSettings.start_fraction, show_default=True,
              type=click.FloatRange(min=0, max=1),
              help="Once saturated, the search jumps to this share of throughput x timeout (0: ramp all the way).")
@click.option("--jump-spawn-rate", default=LoadSettings.jump_spawn_rate, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Users started per second when jumping to a level known to be safe.")
@click.option("--probe-window-s", default=LoadSettings.probe_window_s, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Window over which the search measures throughput to find saturation.")
@click.option("--slo-p95-s", default=SearchSettings.slo_p95_s, show_default=True, type=click.FloatRange(min=0),
              help="Latency objective: also find the most users held with a p95 response time within it (0: skip).")
@click.option("--slo-hold-s", default=SearchSettings.slo_hold_s, show_default=True, type=click.FloatRange(min=0),
              help="Time the users within the latency objective are held.")
@click.option("--wait-s", default=LoadSettings.wait_s, show_default=True, type=click.FloatRange(min=0),
              help="Think time of each user between an answer and its next request (0: back to back).")
@click.option("--max-users", default=3000, show_default=True, type=click.IntRange(min=1),
              help="Where the search stops if nothing has failed yet.")
@click.option("--step-down-pct", default=10.0, show_default=True, type=click.FloatRange(min=0, max=100, min_open=True),
              help="Share of users dropped after a failed confirmation.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images to send [default: $CLOUDDETECT_IMAGES or ../shared/datasets/inputfolder].")
@click.option("--image-order", type=click.Choice(("sequence", "random")), default="sequence", show_default=True)
@click.option("--locust-processes", default=0, show_default=True, type=click.IntRange(min=0),
              help="Locust worker processes under one master (0: a single process).")
@click.option("--progress-interval-s", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="Time between progress lines.")
@click.option("--drain-timeout-s", default=180.0, show_default=True, type=click.FloatRange(min=0),
              help="Time the service gets to finish queued requests before a step.")
@click.option("--ready-timeout-s", default=600.0, show_default=True, type=click.FloatRange(min=0),
              help="Time allowed for the pods to become ready after scaling.")
@click.option("--poll-interval-s", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Time between readiness and drain checks.")
@click.option("--namespace", default="default", show_default=True, help="Kubernetes namespace of the service.")
@click.option("--deployment", default="clouddetect", show_default=True, help="Deployment to scale.")
@click.option("--service", default="clouddetect", show_default=True, help="Service whose NodePort gets the load.")
@click.option("--service-url", help="URL the load goes to on Kubernetes [default: the Service's NodePort on a node].")
@click.option("--pod-port", default=5000, show_default=True, type=int, help="Pods' port serving /metrics.")
@click.option("--expected-pod-rps", default=7.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Requests/s one pod serves, for the expected duration printed before starting.")
@click.option("--pod-cpu", help="A note for experiment.json: each pod's CPU (read from the Deployment on Kubernetes).")
@click.option("--pod-memory", help="A note for experiment.json: each pod's memory (read from the Deployment too).")
@click.option("--engine", help="A note for experiment.json: the inference engine, when the service does not say.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="[default: as kubectl finds it]")
@click.option("--context", "kube_context", help="kubeconfig context [default: the current one].")
def run(**options: Any) -> None:
    """Find, for each pod count, the most users served with no failed request, R times; results go to --out."""
    pods = options["pods"] or ([1] if options["url"] else DEFAULT_PODS)
    if options["url"] and len(pods) != 1:
        raise click.BadParameter("a fixed --url cannot be scaled: give one pod count as its label", param_hint="--pods")
    images = options["images"] or default_folder()
    try:
        image_count = len(image_files(images))
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise click.ClickException(str(exc)) from None
    search = SearchSettings(options["spawn_rate"], options["confirm_spawn_rate"], options["hold_s"],
                            options["max_users"], options["step_down_pct"], options["start_fraction"],
                            options["slo_p95_s"], options["slo_hold_s"], options["wait_s"])
    load = LoadSettings(options["timeout_s"], images.resolve(), options["image_order"], options["locust_processes"],
                        options["progress_interval_s"], options["wait_s"], options["jump_spawn_rate"],
                        options["probe_window_s"], options["hold_windows"], options["stable_tolerance_pct"],
                        options["max_extension_s"])
    out_dir = options["out_dir"] or _new_directory(Path("results") / datetime.now(UTC).strftime("lab-%Y%m%d-%H%M%S"))
    conditions = {
        "platform": "url" if options["url"] else f"kubernetes {options['namespace']}/{options['deployment']}",
        "timeout_s": load.timeout_s, "wait_s": load.wait_s, "spawn_rate": search.spawn_rate,
        "confirm_spawn_rate": search.confirm_spawn_rate, "jump_spawn_rate": load.jump_spawn_rate,
        "start_fraction": search.start_fraction, "hold_s": search.hold_s, "hold_windows": load.hold_windows,
        "stable_tolerance_pct": load.stable_tolerance_pct, "max_extension_s": load.max_extension_s,
        "max_users": search.max_users, "step_down_pct": search.step_down_pct, "slo_p95_s": search.slo_p95_s,
        "slo_hold_s": search.slo_hold_s, "image_order": load.image_order, "image_count": image_count,
        "client_link": client_link_conditions(),
    }
    plan = Plan(pods, options["repeats"], options["client_location"], options["drain_timeout_s"],
                options["poll_interval_s"])
    _echo_expected_duration(plan, search, load, options["expected_pod_rps"])
    try:
        platform = _platform(options, pods[0])
        experiment = Experiment.open(out_dir, conditions, _environment(platform, options))
        click.echo(f"experiment {out_dir}: {len(experiment.runs)} runs already recorded")
        Runner(platform, experiment, plan, search, load, click.echo).run()
    except (ExperimentError, PlatformError, LoadError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted; finished runs are kept in {out_dir}; run again with --out {out_dir} to resume",
                   err=True)
        raise SystemExit(130) from None
    click.echo(f"done: {out_dir}; `clouddetect lab report {out_dir}` writes the report")


def _new_directory(wanted: Path) -> Path:
    """``wanted``, or with a number added if it exists: a run without --out never resumes another experiment."""
    candidate, number = wanted, 1
    while candidate.exists():
        number += 1
        candidate = wanted.with_name(f"{wanted.name}-{number}")
    return candidate


def _echo_expected_duration(plan: Plan, search: SearchSettings, load: LoadSettings, pod_rps: float) -> None:
    def total_s(pods: list[int], repeats: int, locations: int) -> float:
        return locations * repeats * sum(expected_run_s(p, search, load, pod_rps) for p in pods)

    mine = total_s(plan.pods, plan.repeats, 1)
    table = total_s(DEFAULT_PODS, DEFAULT_REPEATS, len(CLIENT_LOCATIONS))
    click.echo(f"expected duration (at {pod_rps:g} req/s per pod, when every first guess holds): this experiment "
               f"({len(plan.pods)} pod counts x {plan.repeats} repeats) {_duration(mine)}; the full table "
               f"({', '.join(map(str, DEFAULT_PODS))} pods x {DEFAULT_REPEATS} repeats x {len(CLIENT_LOCATIONS)} "
               f"client locations) {_duration(table)}, plus scaling")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _environment(platform: Platform, options: dict[str, Any]) -> dict[str, Any]:
    """What the experiment runs on; notes given as flags fill in what the platform cannot tell."""
    served = platform.describe()
    for note in ("pod_cpu", "pod_memory", "engine"):
        served[note] = served.get(note) or options[note]
    return {"code": code_version(), "service": served, "load_generator": load_generator(),
            "client_network": client_network(platform.endpoint())}


def _platform(options: dict[str, Any], pods: int) -> Platform:
    if options["url"]:
        return FixedUrl(options["url"], pods, options["ready_timeout_s"], options["poll_interval_s"], HTTP_TIMEOUT_S)
    return Kubernetes(
        options["namespace"], options["deployment"], options["service"], options["service_url"], options["pod_port"],
        options["ready_timeout_s"], options["poll_interval_s"], options["kubeconfig"], options["kube_context"],
    )


lab.add_command(link)
lab.add_command(bundle_command)
lab.add_command(faults)


@lab.command("report")
@click.argument("experiments", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where report.md, report.html, report.pdf and the plots go [default: FIRST_EXPERIMENT/report].")
@click.option("--title", default="Capacity of CloudDetect", show_default=True, help="The report's title.")
@click.option("--author", help="Author line under the title.")
@click.option("--line", "lines", multiple=True, help="A further title-block line (course, date); repeatable.")
@click.option("--faults", "fault_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A `clouddetect lab faults` result (JSON) for the fault-tolerance discussion; repeatable.")
@click.option("--pdf/--no-pdf", "print_pdf", default=True, show_default=True,
              help="Also print report.pdf with Chromium (found on PATH).")
@click.option("--chromium", envvar="CLOUDDETECT_REPORT_CHROMIUM", help="Chromium to print with [default: on PATH].")
@click.option("--pdf-timeout-s", envvar="CLOUDDETECT_REPORT_PDF_TIMEOUT_S", default=120.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Longest Chromium may take to print the PDF.")
def report(experiments: tuple[Path, ...], out_dir: Path | None, title: str, author: str | None,
           lines: tuple[str, ...], fault_files: tuple[Path, ...], print_pdf: bool, chromium: str | None,
           pdf_timeout_s: float) -> None:
    """Write the capacity report of one or more experiment directories (e.g. one per client location)."""
    from clouddetect.lab.report import pdf  # matplotlib and Jinja are only needed here
    from clouddetect.lab.report import write as report_module
    from clouddetect.lab.report.analysis import FaultFileError

    try:
        printer = (pdf.Printer(pdf.find_chromium(chromium), report_module.FONT_FAMILY, pdf_timeout_s)
                   if print_pdf else None)
        written = report_module.write(experiments, out_dir or experiments[0] / "report",
                                      report_module.TitleBlock(title, author, list(lines)), fault_files, printer)
    except (ExperimentError, pdf.PdfError, FaultFileError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(path)
