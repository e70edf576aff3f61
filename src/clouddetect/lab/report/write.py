"""``lab report``: the capacity report of one or more experiments as Markdown, HTML and PDF.

Experiments measured from different places (the controller node, a remote VM) are merged here; the client
location of each run keeps them apart. Each figure is the mean over repeats ± the sample standard deviation.
The report is laid out by Jinja templates (``templates/``): the discussion's wording is there, its values come from
``analysis``; tables and figures are built here. The PDF is the HTML printed by Chromium (``pdf``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import jinja2

from clouddetect.lab.capacity import evidence
from clouddetect.lab.capacity.results import Experiment, RunRecord
from clouddetect.lab.report import DEFAULT_TITLE, analysis, pdf, plots
from clouddetect.lab.report.analysis import ASSIGNMENT_PODS, CLIENT_LOCATIONS, Facts, Point, Spread
from clouddetect.verdicts import describe_kinds

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"
# Printed page: the size and margins of the PDF, also stated in the HTML's print style.
PAGE_SIZE = "A4"
PAGE_MARGIN_IN = 1.0
FONT_FAMILY = "Liberation Serif"
FONT_SIZE_PT = 12
OBSERVATIONS = "Observations"
CHALLENGES = "Three distributed-systems challenges"


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    kind: ClassVar[str] = "heading"


@dataclass(frozen=True)
class Paragraph:
    text: str
    kind: ClassVar[str] = "paragraph"


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    wide: bool = False  # printed smaller
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Image:
    path: str
    caption: str
    kind: ClassVar[str] = "image"


Block = Heading | Paragraph | Table | Image


@dataclass(frozen=True)
class TitleBlock:
    title: str = DEFAULT_TITLE
    author: str | None = None
    lines: list[str] = field(default_factory=list)


def format_spread(summary: Spread | None, unit: str = "", digits: int = 0) -> str:
    if summary is None:
        return "-"
    return f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}{unit} (n={summary.n})"


def _optional(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _list(values: Sequence[float | None]) -> str:
    return ", ".join(f"{v:g}" for v in values if v is not None) or "-"


def assignment_table(facts: Facts) -> Table:
    """The assignment's table: a row per pod count (1, 2, 4, 8 and any other measured), master and remote columns."""
    by_key = {(p.location, p.pods): p for p in facts.points}
    locations = [*CLIENT_LOCATIONS, *(loc for loc in facts.locations if loc not in CLIENT_LOCATIONS)]
    header = ["pods"] + [f"{title} ({loc})" for loc in locations
                         for title in (f"max users (timeout {_list(facts.timeouts)} s)", "mean response time")]
    rows = []
    for pods in sorted({*ASSIGNMENT_PODS, *(p.pods for p in facts.points)}):
        row = [str(pods)]
        for location in locations:
            point = by_key.get((location, pods))
            row += [format_spread(point.max_users) if point else "-",
                    format_spread(point.avg_ms, " ms") if point else "-"]
        rows.append(row)
    caption = (f"Most users served with no failed request and the mean response time while holding them; mean ± "
               f"sample standard deviation over the repeats (n). A request slower than the timeout "
               f"({_list(facts.timeouts)} s) failed. '-': not measured.")
    return Table(header, rows, caption)


def _pct_spread(summary: Spread | None) -> str:
    return "-" if summary is None else f"{summary.mean:.0%} ± {summary.std * 100:.0f}"


def _share(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def _of(value: str, limit: float | None, digits: int, unit: str = "") -> str:
    return value if value == "-" or limit is None else f"{value} of {limit:.{digits}f}{unit}"


def _bound(point: Point) -> str:
    e = point.evidence
    kinds = [f"{kind} ({runs} of {point.repeats})" for kind, runs in
             (("client", e.client_bound_runs), ("machine", e.machine_bound_runs)) if runs]
    return ", ".join(kinds) or ("no" if e.measured else "-")


def evidence_table(facts: Facts) -> Table:
    """What bound each configuration over its holds: the pods' quota, the machine, or the client."""
    header = ["pods", "client", "pod CPU used (cores)", "throttled periods", "peak pod memory",
              "client CPU (busiest Locust process)", "client link", "load generator's machine busy", "bound by"]
    rows = []
    for p in sorted(facts.points, key=lambda p: (p.pods, p.location)):
        e = p.evidence
        cores = "-" if e.pod_cpu_cores is None else f"{e.pod_cpu_cores.mean:.3f} ± {e.pod_cpu_cores.std:.3f}"
        memory = "-" if e.memory_peak_mib is None else f"{e.memory_peak_mib:.0f}"
        rows.append([str(p.pods), p.location, _of(cores, e.pod_cpu_limit_cores, 2), _pct_spread(e.throttled_share),
                     _of(memory, e.memory_limit_mib, 0, " MiB"), _share(e.client_cpu_share_max, 1),
                     _pct_spread(e.link_share), _pct_spread(e.machine_busy_share), _bound(p)])
    limits = facts.bound_thresholds
    caption = ("What bound each configuration, measured over the holds of its accepted loads: each pod's CPU from "
               "its cgroup (mean over pods and repeats, of its limit), the share of CFS periods in which the quota "
               "stopped it, the most memory any pod's cgroup held since it started (of its limit), the busiest "
               "Locust process's share of a core, the client link's use of its rate, and the load generator's "
               f"machine's CPU. A run is client-bound when a Locust process passed {limits.client_cpu_bound_share:.0%} "
               f"of a core or the link {limits.link_bound_share:.0%} of its rate, machine-bound when its pods used "
               f"under {limits.pod_cpu_starved_share:.0%} of their CPU limit though saturated and not client-bound. "
               "'-': not measured.")
    return Table(header, rows, caption, wide=True)


def capacity_table(facts: Facts) -> Table:
    """The figures that describe the service at each pod count, whatever the timeout."""
    objectives = sorted({p.slo_p95_s for p in facts.points if p.slo_p95_s})
    header = ["pods", "client", "saturation req/s", "scaling efficiency", "median ms", "p95 ms", "p99 ms",
              f"users within p95 ≤ {_list(objectives)} s"]
    rows = [[str(p.pods), p.location, format_spread(p.saturation_rps, digits=1), _optional(p.efficiency, 2),
             format_spread(p.median_ms), format_spread(p.p95_ms), format_spread(p.p99_ms),
             format_spread(p.slo_users)] for p in sorted(facts.points, key=lambda p: (p.pods, p.location))]
    caption = ("Saturation throughput (requests/s once more users add none), scaling efficiency (over 1 pod's "
               "times the pods; 1.0 is linear; '-' where the client or the machine bound either) and response "
               "times at capacity.")
    return Table(header, rows, caption)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items())) or "-"


RUN_FIELDS = ["users at first failure", "confirmations tried", "max users", "avg ms", "median ms", "p95 ms",
              "p99 ms", "req/s", "saturation req/s", "held s", "stable", "users within objective",
              "requests sent / judged", "minutes", "failures at breaking point", "requests per pod",
              "what bound it (over the hold)"]


def _run_column(r: RunRecord) -> list[str]:
    return [_optional(r.breaking_users), ", ".join(str(u) for u in r.confirmed_users_tried) or "-",
            str(r.max_users), _optional(r.avg_ms), _optional(r.median_ms), _optional(r.p95_ms), _optional(r.p99_ms),
            _optional(r.rps, 1), _optional(r.saturation_rps, 1), _optional(r.held_s),
            "-" if r.stable is None else str(r.stable).lower(), _optional(r.slo_users),
            f"{r.requests_sent} / {r.requests_judged}", _optional(r.duration_s / 60, 1),
            _counts(r.breaking_failure_kinds), _counts(r.pod_requests),
            evidence.describe(r.evidence) if r.evidence else "-"]


def runs_tables(runs: Sequence[RunRecord]) -> list[Table]:
    """Every run, one table per client location and pod count with a column per repeat."""
    groups: dict[tuple[str, int], list[RunRecord]] = {}
    for run in sorted(runs, key=lambda r: r.key):
        groups.setdefault((run.client_location, run.pods), []).append(run)
    tables = []
    for (location, pods), group in groups.items():
        columns = [_run_column(r) for r in group]
        rows = [[name, *(column[i] for column in columns)] for i, name in enumerate(RUN_FIELDS)]
        tables.append(Table([f"{location}, {pods} pods", *(f"repeat {r.repeat}" for r in group)], rows,
                            f"Runs from the {location} at {pods} pods.", wide=True))
    return tables


def conditions_table(experiments: Sequence[Experiment]) -> Table:
    names = sorted({k for e in experiments for k in e.conditions})
    rows = [[name, *(str(e.conditions.get(name, "-")) for e in experiments)] for name in names]
    return Table(["condition", *(e.directory.name for e in experiments)], rows, wide=True)


def environment_table(experiments: Sequence[Experiment]) -> Table:
    """What each experiment ran on (code, pods, engine, load generator, network), one row per recorded item."""
    rows = [[e.directory.name, f"{part}.{name}", str(value)]
            for e in experiments for part, items in sorted(e.environment.items()) if isinstance(items, dict)
            for name, value in sorted(items.items())]
    return Table(["experiment", "item", "value"], rows, wide=True)


def by_configuration(points: Sequence[Point], name: str) -> dict[str, dict[int, Spread]]:
    """location -> pods -> the summary ``name`` of each point that has one."""
    series: dict[str, dict[int, Spread]] = {}
    for point in points:
        summary = getattr(point, name)
        if summary is not None:
            series.setdefault(point.location, {})[point.pods] = summary
    return series


def figures(experiments: Sequence[Experiment], out_dir: Path) -> list[tuple[plots.Drawn, str]]:
    """Every figure that has data, with its caption; a figure without data is left out."""
    points = analysis.gather(experiments).points
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates = [
        (plots.per_pods(by_configuration(points, "max_users"), "users with no failed request",
                        "Capacity against pods", out_dir / "max_users_vs_pods.png"),
         "Most users served with no failed request, against pods (mean ± std over repeats)."),
        (plots.per_pods(by_configuration(points, "avg_ms"), "mean response time (ms)",
                        "Mean response time at capacity", out_dir / "response_time_vs_pods.png"),
         "Mean response time while holding the capacity, against pods."),
        (plots.per_pods(by_configuration(points, "saturation_rps"), "requests/s",
                        "Saturation throughput against pods", out_dir / "saturation_rps_vs_pods.png"),
         "Requests/s once more users no longer add throughput, against pods."),
    ]
    runs = [r for e in experiments for r in e.runs]
    for location in sorted({r.client_location for r in runs}):
        curves = [(r.pods, plots.load_curve(history)) for e in experiments for r in e.runs
                  if r.client_location == location
                  and (history := e.raw_path(r.key) / "search_stats_history.csv").exists()]
        candidates.append((
            plots.load_curves(curves, f"While ramping towards the breaking point (client on {location})",
                              out_dir / f"load_curves_{location}.png"),
            f"Mean response time and throughput against users while ramping, client on {location}.",
        ))
    return [(drawn, caption) for drawn, caption in candidates if drawn is not None]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("clouddetect.lab.report", "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             autoescape=jinja2.select_autoescape(["html.j2"]))
    env.filters.update(num=_num, mean=_mean, users=_users, pct=_pct, pods=_pods, and_list=_and_list,
                       kinds=describe_kinds)
    env.globals.update(linear=analysis.LINEAR_EFFICIENCY, low_bound=analysis.LOW_BOUND_RATIO)
    return env


def _num(value: float | None, digits: int = 0) -> str:
    return "?" if value is None else f"{value:,.{digits}f}"


def _mean(summary: Spread | None, digits: int = 0) -> str:
    return "?" if summary is None else f"{summary.mean:,.{digits}f}"


def _users(summary: Spread | None) -> str:
    """A mean number of users: whole when it is, else with one decimal."""
    if summary is None:
        return "?"
    return f"{summary.mean:,.0f}" if summary.mean.is_integer() else f"{summary.mean:,.1f}"


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{share * 100:.0f} %"


def _pods(pods: int) -> str:
    return f"{pods} pod" if pods == 1 else f"{pods} pods"


def _and_list(items: Sequence[object]) -> str:
    words = [str(i) for i in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def discussion(facts: Facts) -> list[Block]:
    """The observations and challenges: the template's Markdown subset (headings, paragraphs) as blocks."""
    text = _environment().get_template("discussion.md.j2").render(
        facts=facts, timeout_share=analysis.TIMEOUT_SHARE_HELD, request_kb=analysis.REQUEST_BYTES // 1000,
        link_limit_share=facts.bound_thresholds.link_bound_share)
    blocks: list[Block] = []
    for chunk in re.split(r"\n\s*\n", text):
        chunk = " ".join(line.strip() for line in chunk.splitlines() if line.strip())
        if (heading := re.match(r"(#+) (.*)", chunk)) is not None:
            blocks.append(Heading(len(heading.group(1)), heading.group(2)))
        elif chunk:
            blocks.append(Paragraph(chunk))
    return blocks


def words(blocks: Sequence[Block], section: str | None = None) -> int:
    """Words of prose (paragraphs and figure captions; not tables), of the whole report or one level-2 section."""
    count, inside = 0, section is None
    for block in blocks:
        if isinstance(block, Heading) and block.level <= 2 and section is not None:
            inside = block.text == section
        elif inside and isinstance(block, Paragraph | Image):
            count += len((block.text if isinstance(block, Paragraph) else block.caption).split())
    return count


def build(experiments: Sequence[Experiment], out_dir: Path, fault_files: Sequence[Path] = ()) -> list[Block]:
    facts = analysis.gather(experiments, fault_files)
    runs = [r for e in experiments for r in e.runs]
    images: list[Block] = [Image(drawn.path.name, caption) for drawn, caption in figures(experiments, out_dir)]
    return [
        Paragraph(
            f"{len(runs)} runs from {len(experiments)} experiment(s). A run's capacity is the most users held with "
            "no failed request (not HTTP 200, not valid JSON, wrong id, malformed objects, or slower than the "
            "timeout), every request sent judged, until the response time is stable. For users without think time "
            f"that figure is about {analysis.TIMEOUT_SHARE_HELD:g} x throughput x timeout, so the throughput, "
            "response times and users within the latency objective are given beside it."),
        Heading(2, "Capacity"),
        assignment_table(facts),
        evidence_table(facts),
        capacity_table(facts),
        *discussion(facts),
        *([Heading(2, "Figures"), *images] if images else []),
        Heading(2, "Appendix: runs, conditions and environment"),
        Paragraph("Requests per pod are those each pod answered during the accepted confirmation (ramp and hold)."),
        *runs_tables(runs),
        conditions_table(experiments),
        environment_table(experiments),
    ]


def render(blocks: Sequence[Block], title: TitleBlock, template: str) -> str:
    return _environment().get_template(template).render(
        blocks=blocks, title=title, page_size=PAGE_SIZE, margin_in=PAGE_MARGIN_IN, font_family=FONT_FAMILY,
        font_size_pt=FONT_SIZE_PT)


def write(experiment_dirs: Sequence[Path], out_dir: Path, title: TitleBlock | None = None,
          fault_files: Sequence[Path] = (), printer: pdf.Printer | None = None) -> list[Path]:
    """Writes the report (and its PDF when a printer is given); returns the files written."""
    experiments = [Experiment.load(d) for d in experiment_dirs]
    blocks = build(experiments, out_dir, fault_files)
    title = title or TitleBlock()
    (out_dir / REPORT_MD).write_text(render(blocks, title, "report.md.j2"))
    (out_dir / REPORT_HTML).write_text(render(blocks, title, "report.html.j2"))
    written = [out_dir / REPORT_MD, out_dir / REPORT_HTML]
    if printer is not None:
        printer.print(out_dir / REPORT_HTML, out_dir / REPORT_PDF)
        written.append(out_dir / REPORT_PDF)
    return written + [out_dir / b.path for b in blocks if isinstance(b, Image)]


