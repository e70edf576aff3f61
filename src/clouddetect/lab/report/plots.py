"""The report's PNG plots, drawn with matplotlib's non-interactive backend (no display needed).

A figure without data is not drawn. Each drawn figure comes back with the series its artists hold, read from
matplotlib after drawing, so what a figure shows can be checked without looking at pixels.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from clouddetect.lab.report.analysis import Spread  # noqa: E402

# Ramp figures are taken over windows of this many seconds of Locust's once-a-second history.
HISTORY_WINDOW_S = 5
FIGURE_SIZE_IN = (7.0, 4.5)
FIGURE_DPI = 110


@dataclass(frozen=True)
class Series:
    label: str
    x: list[float]
    y: list[float]


@dataclass(frozen=True)
class Drawn:
    path: Path
    series: list[Series]


@dataclass(frozen=True)
class LoadPoint:
    users: int
    avg_ms: float
    rps: float


def load_curve(history_csv: Path, window_s: int = HISTORY_WINDOW_S) -> list[LoadPoint]:
    """Mean response time and throughput against users, from a step's ``_stats_history.csv``.

    The file holds running totals; the requests answered within each window give its mean and rate.
    """
    with history_csv.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    points = []
    for start, end in zip(rows[::window_s], rows[window_s::window_s], strict=False):
        n0, n1 = int(start["Total Request Count"]), int(end["Total Request Count"])
        seconds = int(end["Timestamp"]) - int(start["Timestamp"])
        if n1 <= n0 or seconds <= 0:  # nothing answered, or statistics were reset in between
            continue
        total_ms = float(end["Total Average Response Time"]) * n1 - float(start["Total Average Response Time"]) * n0
        points.append(LoadPoint(int(end["User Count"]), total_ms / (n1 - n0), (n1 - n0) / seconds))
    return points


def _save(figure: plt.Figure, path: Path, drawn: list[Series]) -> Drawn:
    figure.tight_layout()
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)
    return Drawn(path, drawn)


def _series(label: str, line: Any) -> Series:
    return Series(label, [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])


def per_pods(series: dict[str, dict[int, Spread]], ylabel: str, title: str, path: Path) -> Drawn | None:
    """One line per client location: a figure (mean, with the standard deviation as error bars) per pod count."""
    series = {location: by_pods for location, by_pods in series.items() if by_pods}
    if not series:
        return None
    figure, axes = plt.subplots(figsize=FIGURE_SIZE_IN)
    drawn = []
    for location, by_pods in sorted(series.items()):
        pods = sorted(by_pods)
        label = f"client on {location}"
        bars = axes.errorbar(pods, [by_pods[p].mean for p in pods], yerr=[by_pods[p].std for p in pods],
                             marker="o", capsize=4, label=label)
        drawn.append(_series(label, bars.lines[0]))
    axes.set_xscale("log", base=2)
    all_pods = sorted({p for by_pods in series.values() for p in by_pods})
    axes.set_xticks(all_pods, [str(p) for p in all_pods])
    axes.set_xlabel("pods")
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path, drawn)


def load_curves(curves: Iterable[tuple[int, list[LoadPoint]]], title: str, path: Path) -> Drawn | None:
    """Response time and throughput against users while ramping, one colour per pod count (repeats overlaid).

    Series are labelled "N pods: response time" and "N pods: requests/s", one pair per run.
    """
    curves = sorted(((pods, points) for pods, points in curves if points), key=lambda c: c[0])
    if not curves:
        return None
    figure, (time_axes, rate_axes) = plt.subplots(1, 2, figsize=(FIGURE_SIZE_IN[0] * 1.6, FIGURE_SIZE_IN[1]))
    colours: dict[int, str] = {}
    drawn = []
    for pods, points in curves:
        colour = colours.setdefault(pods, f"C{len(colours)}")
        label = None if _labelled(time_axes, pods) else f"{pods} pods"
        users = [p.users for p in points]
        [times] = time_axes.plot(users, [p.avg_ms for p in points], color=colour, alpha=0.8, label=label)
        [rates] = rate_axes.plot(users, [p.rps for p in points], color=colour, alpha=0.8, label=label)
        drawn += [_series(f"{pods} pods: response time", times), _series(f"{pods} pods: requests/s", rates)]
    for axes, ylabel in ((time_axes, "mean response time (ms)"), (rate_axes, "requests/s")):
        axes.set_xlabel("users")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    return _save(figure, path, drawn)


def _labelled(axes: plt.Axes, pods: int) -> bool:
    return any(line.get_label() == f"{pods} pods" for line in axes.get_lines())
