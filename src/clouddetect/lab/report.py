"""``lab report``: the capacity table, the plots and every run, as Markdown and HTML, from one or more experiments.

Experiments measured from different places (the controller node, a remote VM) are merged here; the client
location of each run keeps them apart. Each figure is the mean over repeats +- the sample standard deviation.
Scaling efficiency is a pod count's saturation throughput over that of 1 pod times the pods (1.0: linear).
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clouddetect.lab import plots
from clouddetect.lab.plots import Summary
from clouddetect.lab.results import Experiment, RunRecord

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    path: str
    caption: str


Block = str | Table | Image  # a str is a paragraph; "# ..." and "## ..." are headings


def summarise(values: Iterable[float | None]) -> Summary | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return Summary(statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else 0.0, len(known))


def by_configuration(runs: Sequence[RunRecord], field: str) -> dict[str, dict[int, Summary]]:
    """location -> pods -> summary of ``field`` over the repeats."""
    grouped: dict[str, dict[int, list[float | None]]] = {}
    for run in runs:
        grouped.setdefault(run.client_location, {}).setdefault(run.pods, []).append(getattr(run, field))
    return {
        location: {pods: s for pods, values in by_pods.items() if (s := summarise(values)) is not None}
        for location, by_pods in grouped.items()
    }


def format_summary(summary: Summary | None, unit: str = "", digits: int = 0) -> str:
    if summary is None:
        return "-"
    return f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}{unit} (n={summary.n})"


def capacity_table(runs: Sequence[RunRecord]) -> Table:
    """Per pod count and client location: the assignment's figure beside the ones that describe the service."""
    timeouts = sorted({r.timeout_s for r in runs})
    objectives = sorted({r.slo_p95_s for r in runs if r.slo_p95_s})
    columns = [  # field, title, unit, decimals
        ("max_users", f"max users (timeout {_list(timeouts)} s)", "", 0),
        ("avg_ms", "mean", " ms", 0), ("median_ms", "median", " ms", 0), ("p95_ms", "p95", " ms", 0),
        ("p99_ms", "p99", " ms", 0), ("saturation_rps", "saturation req/s", "", 1),
        ("slo_users", f"users within p95 ≤ {_list(objectives)} s", "", 0),
    ]
    summaries = {name: by_configuration(runs, name) for name, _, _, _ in columns}
    saturation = summaries["saturation_rps"]
    locations = sorted({r.client_location for r in runs})
    header = ["pods"] + [f"{title} ({loc})" for loc in locations
                         for title in [t for _, t, _, _ in columns] + ["scaling efficiency"]]
    rows = []
    for pods in sorted({r.pods for r in runs}):
        row = [str(pods)]
        for location in locations:
            row += [format_summary(summaries[name].get(location, {}).get(pods), unit, digits)
                    for name, _, unit, digits in columns]
            row.append(_optional(scaling_efficiency(saturation.get(location, {}), pods), 2))
        rows.append(row)
    return Table(header, rows)


def scaling_efficiency(saturation_by_pods: dict[int, Summary], pods: int) -> float | None:
    one, this = saturation_by_pods.get(1), saturation_by_pods.get(pods)
    return this.mean / (pods * one.mean) if one and this and one.mean > 0 else None


def _list(values: Sequence[float | None]) -> str:
    return ", ".join(f"{v:g}" for v in values if v is not None) or "-"


def _optional(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items())) or "-"


def runs_table(runs: Sequence[RunRecord]) -> Table:
    header = ["client", "pods", "repeat", "users at first failure", "confirmations tried", "max users",
              "avg ms", "median ms", "p95 ms", "p99 ms", "req/s", "saturation req/s", "held s", "stable",
              "users within objective", "requests sent / judged", "minutes", "failures at breaking point",
              "requests per pod"]
    rows = [
        [r.client_location, str(r.pods), str(r.repeat), _optional(r.breaking_users), _tried(r),
         str(r.max_users), _optional(r.avg_ms), _optional(r.median_ms), _optional(r.p95_ms), _optional(r.p99_ms),
         _optional(r.rps, 1), _optional(r.saturation_rps, 1), _optional(r.held_s), _optional_text(r.stable),
         _optional(r.slo_users), f"{r.requests_sent} / {r.requests_judged}", _optional(r.duration_s / 60, 1),
         _counts(r.breaking_failure_kinds), _counts(r.pod_requests)]
        for r in sorted(runs, key=lambda r: r.key)
    ]
    return Table(header, rows)


def _optional_text(value: object) -> str:
    return "-" if value is None else str(value).lower()


def _tried(run: RunRecord) -> str:
    return ", ".join(str(u) for u in run.confirmed_users_tried) or "-"


def conditions_table(experiments: Sequence[Experiment]) -> Table:
    names = sorted({k for e in experiments for k in e.conditions})
    return Table(["experiment", *names],
                 [[e.directory.name, *(str(e.conditions.get(n, "-")) for n in names)] for e in experiments])


def environment_table(experiments: Sequence[Experiment]) -> Table:
    """What each experiment ran on (code, pods, engine, load generator, network), one row per recorded item."""
    rows = [[e.directory.name, f"{part}.{name}", str(value)]
            for e in experiments for part, items in sorted(e.environment.items()) if isinstance(items, dict)
            for name, value in sorted(items.items())]
    return Table(["experiment", "item", "value"], rows)


def figures(experiments: Sequence[Experiment], out_dir: Path) -> list[tuple[plots.Drawn, str]]:
    """Every figure that has data, with its caption; a figure without data is left out."""
    runs = [r for e in experiments for r in e.runs]
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates = [
        (plots.per_pods(by_configuration(runs, "max_users"), "users with no failed request",
                        "Capacity against pods", out_dir / "max_users_vs_pods.png"),
         "Most users served with no failed request, against pods (mean ± std over repeats)."),
        (plots.per_pods(by_configuration(runs, "avg_ms"), "mean response time (ms)",
                        "Mean response time at capacity", out_dir / "response_time_vs_pods.png"),
         "Mean response time while holding the capacity, against pods."),
        (plots.per_pods(by_configuration(runs, "saturation_rps"), "requests/s",
                        "Saturation throughput against pods", out_dir / "saturation_rps_vs_pods.png"),
         "Requests/s once more users no longer add throughput, against pods."),
    ]
    for location in sorted({r.client_location for r in runs}):
        curves = [(r.pods, plots.load_curve(history)) for e in experiments for r in e.runs
                  if r.client_location == location
                  and (history := e.raw_path(r.key) / "search_stats_history.csv").exists()]
        candidates.append((
            plots.load_curves(curves, f"While ramping towards the breaking point (client on {location})",
                              out_dir / f"load_curves_{location}.png"),
            f"Mean response time and throughput against users during the search ramp, client on {location}; "
            "the response time lags the users being added.",
        ))
    return [(drawn, caption) for drawn, caption in candidates if drawn is not None]


def build(experiments: Sequence[Experiment], out_dir: Path) -> list[Block]:
    runs = [r for e in experiments for r in e.runs]
    images = [Image(drawn.path.name, caption) for drawn, caption in figures(experiments, out_dir)]
    return [
        "# Capacity of CloudDetect",
        f"{len(runs)} runs from {len(experiments)} experiment(s). A run's capacity is the most users held with no "
        "failed request (not HTTP 200, not valid JSON, wrong id, malformed objects, or slower than the timeout), "
        "every request sent judged, until the response time is stable; response times are those of that hold. "
        "For users without think time that figure is about 0.75 x throughput x timeout: it says as much about the "
        "timeout as about the service. The saturation throughput (requests/s once more users add none), the "
        "response times and the users within the latency objective describe the service; scaling efficiency is "
        "the saturation throughput over 1 pod's times the pods. Figures: mean ± sample standard deviation over "
        "the repeats (n).",
        "## Capacity",
        capacity_table(runs),
        "## Plots",
        *images,
        "## Runs",
        "Requests per pod are those each pod answered during the accepted confirmation (ramp and hold).",
        runs_table(runs),
        "## Conditions",
        conditions_table(experiments),
        "## Environment",
        environment_table(experiments),
    ]


def to_markdown(blocks: Sequence[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Table):
            lines = [_md_row(block.header), _md_row(["---"] * len(block.header))]
            parts.append("\n".join(lines + [_md_row(row) for row in block.rows]))
        elif isinstance(block, Image):
            parts.append(f"![{block.caption}]({block.path})\n\n{block.caption}")
        else:
            parts.append(block)
    return "\n\n".join(parts) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def to_html(blocks: Sequence[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Table):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            parts.append(f'<figure><img src="{html.escape(block.path)}" alt="{html.escape(block.caption)}">'
                         f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        elif block.startswith("## "):
            parts.append(f"<h2>{html.escape(block[3:])}</h2>")
        elif block.startswith("# "):
            parts.append(f"<h1>{html.escape(block[2:])}</h1>")
        else:
            parts.append(f"<p>{html.escape(block)}</p>")
    style = ("body{font-family:sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.25rem .5rem;text-align:right}"
             "img{max-width:100%}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Capacity of CloudDetect</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write(experiment_dirs: Sequence[Path], out_dir: Path) -> list[Path]:
    experiments = [Experiment.load(d) for d in experiment_dirs]
    blocks = build(experiments, out_dir)
    (out_dir / REPORT_MD).write_text(to_markdown(blocks))
    (out_dir / REPORT_HTML).write_text(to_html(blocks))
    return [out_dir / REPORT_MD, out_dir / REPORT_HTML, *(out_dir / b.path for b in blocks if isinstance(b, Image))]
