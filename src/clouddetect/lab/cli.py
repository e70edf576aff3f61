"""``clouddetect lab run | report``: the capacity experiment as one command, and its report."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from clouddetect.images import default_folder, image_files
from clouddetect.lab.capacity.evidence import EvidenceSettings
from clouddetect.lab.capacity.experiment import (
    ASSIGNMENT_PODS,
    CLIENT_LOCATIONS,
    Plan,
    Runner,
    expected_run_s,
    experiment_conditions,
)
from clouddetect.lab.capacity.host import client_network, code_version, load_generator
from clouddetect.lab.capacity.locust_runs import LoadError
from clouddetect.lab.capacity.results import Experiment, ExperimentError
from clouddetect.lab.capacity.search import SearchSettings
from clouddetect.lab.capacity.targets import FixedUrl, Kubernetes, KubernetesSettings, Target, TargetError
from clouddetect.lab.faults import faults
from clouddetect.lab.network.cli import link
from clouddetect.lab.network.link import client_link_conditions
from clouddetect.lab.report import DEFAULT_TITLE
from clouddetect.loadtest.settings import LoadSettings
from clouddetect.settings_fields import click_options
from clouddetect.submission import bundle_command

HTTP_TIMEOUT_S = 10.0
T = TypeVar("T")


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
@click_options(Plan, ["repeats", "client_location"])
@click_options(LoadSettings, ["timeout_s"])
@click_options(SearchSettings, ["spawn_rate", "confirm_spawn_rate", "hold_s"])
@click_options(LoadSettings, ["hold_windows", "stable_tolerance_pct", "max_extension_s"])
@click_options(SearchSettings, ["start_fraction"])
@click_options(LoadSettings, ["jump_spawn_rate", "probe_window_s"])
@click_options(SearchSettings, ["slo_p95_s", "slo_hold_s"])
@click_options(LoadSettings, ["wait_s"])
@click_options(SearchSettings, ["max_users", "step_down_pct"])
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images to send [default: $CLOUDDETECT_IMAGES or ../shared/datasets/inputfolder].")
@click_options(LoadSettings, ["image_order", "locust_processes", "progress_interval_s"])
@click_options(Plan, ["drain_timeout_s"])
@click_options(KubernetesSettings, ["ready_timeout_s", "metrics_timeout_s"])
@click_options(Plan, ["poll_interval_s"])
@click_options(KubernetesSettings, ["namespace", "deployment", "service", "service_url", "pod_port"])
@click.option("--expected-pod-rps", default=7.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Requests/s one pod serves, for the expected duration printed before starting.")
@click.option("--pod-cpu", help="A note for experiment.json: each pod's CPU (read from the Deployment on Kubernetes).")
@click.option("--pod-memory", help="A note for experiment.json: each pod's memory (read from the Deployment too).")
@click.option("--engine", help="A note for experiment.json: the inference engine, when the service does not say.")
@click_options(KubernetesSettings, ["kubeconfig", "context"])
@click_options(EvidenceSettings, ["client_cpu_bound_share", "link_bound_share", "pod_cpu_starved_share"])
def run(**options: Any) -> None:
    """Find, for each pod count, the most users served with no failed request, R times; results go to --out."""
    pods = options["pods"] or ([1] if options["url"] else list(ASSIGNMENT_PODS))
    if options["url"] and len(pods) != 1:
        raise click.BadParameter("a fixed --url cannot be scaled: give one pod count as its label", param_hint="--pods")
    images = options["images"] or default_folder()
    try:
        image_count = len(image_files(images))
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise click.ClickException(str(exc)) from None
    search = _from_options(SearchSettings, options)
    load = _from_options(LoadSettings, {**options, "images": images.resolve()})
    plan = _from_options(Plan, {**options, "pods": pods})
    out_dir = options["out_dir"] or _new_directory(Path("results") / datetime.now(UTC).strftime("lab-%Y%m%d-%H%M%S"))
    platform_name = "url" if options["url"] else f"kubernetes {options['namespace']}/{options['deployment']}"
    conditions = experiment_conditions(platform_name, search, load, image_count, client_link_conditions())
    _echo_expected_duration(plan, search, load, options["expected_pod_rps"])
    try:
        platform = _target(options, pods[0])
        experiment = Experiment.open(out_dir, conditions, _environment(platform, options))
        click.echo(f"experiment {out_dir}: {len(experiment.runs)} runs already recorded")
        Runner(platform, experiment, plan, search, load, click.echo, _from_options(EvidenceSettings, options)).run()
    except (ExperimentError, TargetError, LoadError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted; finished runs are kept in {out_dir}; run again with --out {out_dir} to resume",
                   err=True)
        raise SystemExit(130) from None
    click.echo(f"done: {out_dir}; `clouddetect lab report {out_dir}` writes the report")


def _from_options(cls: type[T], options: dict[str, Any]) -> T:
    """A settings object from the command's options that are its fields."""
    return cls(**{f.name: options[f.name] for f in fields(cls)})


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
    table = total_s(list(ASSIGNMENT_PODS), Plan.repeats, len(CLIENT_LOCATIONS))
    click.echo(f"expected duration (at {pod_rps:g} req/s per pod, when every first guess holds): this experiment "
               f"({len(plan.pods)} pod counts x {plan.repeats} repeats) {_duration(mine)}; the full table "
               f"({', '.join(map(str, ASSIGNMENT_PODS))} pods x {Plan.repeats} repeats x {len(CLIENT_LOCATIONS)} "
               f"client locations) {_duration(table)}, plus scaling")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _environment(platform: Target, options: dict[str, Any]) -> dict[str, Any]:
    """What the experiment runs on; notes given as flags fill in what the platform cannot tell."""
    served = platform.describe()
    for note in ("pod_cpu", "pod_memory", "engine"):
        served[note] = served.get(note) or options[note]
    return {"code": code_version(), "service": served, "load_generator": load_generator(),
            "client_network": client_network(platform.endpoint())}


def _target(options: dict[str, Any], pods: int) -> Target:
    if options["url"]:
        return FixedUrl(options["url"], pods, options["ready_timeout_s"], options["poll_interval_s"], HTTP_TIMEOUT_S)
    return Kubernetes(_from_options(KubernetesSettings, options), options["poll_interval_s"])


lab.add_command(link)
lab.add_command(bundle_command)
lab.add_command(faults)


@lab.command("report")
@click.argument("experiments", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where report.md, report.html, report.pdf and the plots go [default: FIRST_EXPERIMENT/report].")
@click.option("--title", default=DEFAULT_TITLE, show_default=True, help="The report's title.")
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
