"""What `nnlab runs` prints: the table of runs fitted to the terminal's width, every column for
`--wide`, runs grouped by setting (`--group-by`), and csv, json or markdown for scripts.

A narrow table chooses its columns rather than cutting its cells: the run's name (or short
id), its status, the model and data, then the main metrics, then the other settings, as many as
fit; a setting equal in every listed run is said once below the table instead."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len

from nnlab import noise
from nnlab.errors import choice_error
from nnlab.runs import lower_is_better

CHOICES = ("model", "data", "optimizer", "norm", "activation", "scheduler")
MAIN_METRICS = (
    "test/acc", "val/acc", "test/loss", "test/mae", "test/sample_score", "test/map_50",
)  # fmt: skip
FORMATS = ("csv", "json", "markdown")
WALL = "wall s"
# What a record leaves out: a run's layer-by-layer lists, and what its other fields say
_NOT_RECORDED = {"settings", "grad_norms", "warnings"}


@dataclass
class Table:
    """Headers and rows of text cells, and what the table itself cannot say (notes)."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str]


def metrics_of(chosen: list[dict[str, Any]], sort: str | None) -> list[str]:
    """The main metrics the listed runs have, the sort metric first."""
    metrics = [m for m in MAIN_METRICS if any(m in s for s in chosen)]
    if sort:
        metrics = [sort, *(m for m in metrics if m != sort)]
    return metrics


def _metric_cell(summary: dict[str, Any], metric: str, compact: bool) -> str:
    value = noise.plain_value(summary, metric)
    if value is None:
        return ""
    bounds = noise.run_interval(summary, metric)
    if compact:
        return noise.fmt_compact(value, bounds)
    return " ".join(filter(None, (noise.fmt_number(value), noise.fmt_interval(bounds))))


def _status(summary: dict[str, Any]) -> str:
    return "damaged" if summary["status"].startswith("damaged") else summary["status"]


def runs_table(chosen: list[dict[str, Any]], title: str, sort: str | None, width: int) -> Table:
    """The runs in `width` columns: every cell whole, the columns that fit."""
    metrics = metrics_of(chosen, sort)
    columns: dict[str, list[str]] = {
        "run": [s.get("name") or s["id"] for s in chosen],
        "status": [_status(s) for s in chosen],
        **{c: [str(s["settings"].get(c, "")) for s in chosen] for c in CHOICES},
        "seed": [str(s["settings"].get("seed", "")) for s in chosen],
        **{m: [_metric_cell(s, m, compact=True) for s in chosen] for m in metrics},
        WALL: [f"{s['wall_time_s']:.1f}" if "wall_time_s" in s else "" for s in chosen],
    }
    notes = []
    same = [c for c in (*CHOICES, "seed") if len(chosen) > 1 and len(set(columns[c])) == 1]
    shared = [f"{c}={columns[c][0]}" for c in same if columns[c][0]]
    if shared:
        notes.append(f"Same in every run: {', '.join(shared)}.")
    for key in [*same, *(c for c, cells in columns.items() if not any(cells))]:
        columns.pop(key, None)
    # what tells the runs apart (settings left after dropping the equal ones) before more metrics
    priority = ["run", "status", "model", "data", *metrics[:1], *CHOICES, "seed", *columns]
    shown = fit(columns, priority, width)
    left = [c for c in columns if c not in shown]
    if left:
        notes.append(f"Not shown for width: {', '.join(left)} (--wide shows every column).")
    if any("±" in cell for m in metrics if m in shown for cell in columns[m]):
        notes.append("a±b: b is half the 95% interval of the test accuracy (Wilson).")
    notes += [f"{s['run']}: {s['status']}" for s in chosen if s["status"].startswith("damaged")]
    rows = [[columns[c][i] for c in shown] for i in range(len(chosen))]
    return Table(title, shown, rows, notes)


def fit(columns: dict[str, list[str]], priority: list[str], width: int) -> list[str]:
    """The columns that fit `width` whole, taken in priority order, shown in table order. A
    table with borders takes 3 characters per column (padding and rule) and 1 more."""
    taken: set[str] = set()
    used = 1
    for name in dict.fromkeys(priority):
        if name not in columns or name in taken:
            continue
        need = max(cell_len(cell) for cell in [name, *columns[name]]) + 3
        if used + need <= width or not taken:  # the first column is shown whatever its width
            taken.add(name)
            used += need
    return [c for c in columns if c in taken]


def wide_table(chosen: list[dict[str, Any]], title: str, sort: str | None) -> Table:
    """Every column, as `nnlab runs --wide` shows it: whole directory names, all settings."""
    metrics = metrics_of(chosen, sort)
    headers = ["run", *CHOICES, "seed", *metrics, WALL, "status"]
    rows = [
        [
            s["run"],
            *(str(s["settings"].get(c, "")) for c in (*CHOICES, "seed")),
            *(_metric_cell(s, m, compact=False) for m in metrics),
            f"{s['wall_time_s']:.1f}" if "wall_time_s" in s else "",
            s["status"],
        ]
        for s in chosen
    ]
    notes = []
    if any(noise.run_interval(s, m) for s in chosen for m in metrics):
        notes.append("[a, b]: the 95% interval of the test accuracy for the test set's size.")
    return Table(title, headers, rows, notes)


def record(summary: dict[str, Any]) -> dict[str, Any]:
    """One run as plain values, for csv and json: name, status, settings, every metric."""
    settings = summary["settings"]
    out: dict[str, Any] = {
        "run": summary["run"],
        "name": summary.get("name"),
        "id": summary["id"],
        "date": summary["date"],
        "status": summary["status"],
        **{c: settings.get(c) for c in (*CHOICES, "seed")},
    }
    scalars = (int, float, str, bool, type(None))
    for key in sorted(k for k in summary if k not in out and k not in _NOT_RECORDED):
        if isinstance(summary[key], scalars):
            out[key] = summary[key]
    for metric in noise.INTERVAL_METRICS:
        bounds = noise.run_interval(summary, metric)
        if bounds:
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = bounds
    return out


def _groups(
    chosen: list[dict[str, Any]], keys: list[str], sort: str | None
) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """The finished runs by their values of the keys; best mean of `sort` first, if given."""
    finished = [s for s in chosen if s["status"] == "finished"]
    groups = noise.grouped(finished, lambda s: tuple(str(s["settings"].get(k)) for k in keys))
    if not sort:
        return groups  # type: ignore[return-value]
    sign = 1 if lower_is_better(sort) else -1

    def rank(runs: list[dict[str, Any]]) -> tuple[bool, float]:
        found = noise.column_spread(runs, sort)
        return (found is None, sign * found.mean if found else 0.0)

    return dict(sorted(groups.items(), key=lambda item: rank(item[1])))  # type: ignore[arg-type]


def group_records(
    chosen: list[dict[str, Any]], keys: list[str], sort: str | None
) -> list[dict[str, Any]]:
    """One record per value of the keys over the finished runs: n, and each metric's mean, std
    and (accuracies) 95% interval."""
    groups = _groups(chosen, keys, sort)
    metrics = sorted({k for runs in groups.values() for s in runs for k in s if _is_metric(k)})
    records = []
    for values, runs in groups.items():
        item: dict[str, Any] = {**dict(zip(keys, values, strict=True)), "n": len(runs)}
        for metric in metrics:
            found = noise.column_spread(runs, metric)
            if found is None:
                continue
            item[metric], item[f"{metric}_std"] = found.mean, found.std
            bounds = noise.interval(runs, metric, found.mean)
            if bounds:
                item[f"{metric}_ci_low"], item[f"{metric}_ci_high"] = bounds
        records.append(item)
    return records


def _is_metric(key: str) -> bool:
    return "/" in key or key.endswith("_s")


def grouped_table(
    chosen: list[dict[str, Any]], keys: list[str], sort: str | None, width: int | None
) -> Table:
    """`nnlab runs --group-by`: one row per value of the keys, mean ± std and n of each main
    metric over its finished runs, a test accuracy's 95% interval beside it; the columns that
    fit `width` (None: all)."""
    groups = _groups(chosen, keys, sort)
    finished = [s for runs in groups.values() for s in runs]
    metrics = metrics_of(finished, sort)
    columns: dict[str, list[str]] = {k: [v[i] for v in groups] for i, k in enumerate(keys)}
    columns["n"] = [str(len(runs)) for runs in groups.values()]
    for metric in metrics:
        columns[metric] = [noise.cell(runs, metric) for runs in groups.values()]
    shown = fit(columns, [*keys, "n", *metrics], width) if width else list(columns)
    notes = []
    if len(finished) < len(chosen):
        notes.append(f"Left out: {len(chosen) - len(finished)} runs that did not finish.")
    left = [c for c in columns if c not in shown]
    if left:
        notes.append(f"Not shown for width: {', '.join(left)} (--wide shows every column).")
    legend = noise.legend(finished, [m for m in metrics if m in shown], repeated=True)
    notes += [legend] if legend else []
    rows = [[columns[c][i] for c in shown] for i in range(len(groups))]
    title = f"{len(finished)} finished runs in {len(groups)} groups by {', '.join(keys)}"
    return Table(title, shown, rows, notes)


def render(records: list[dict[str, Any]], kind: str) -> str:
    """The records as csv, json or a markdown table: every column, values in full."""
    if kind not in FORMATS:
        raise choice_error("--format", kind, FORMATS)
    if kind == "json":
        return json.dumps(records, indent=2, default=str) + "\n"
    headers = list(dict.fromkeys(k for r in records for k in r))
    if kind == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, headers, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()
    lines = [f"| {' | '.join(headers)} |", f"|{'|'.join('---' for _ in headers)}|"]
    for r in records:
        cells = ("" if r.get(h) is None else str(r[h]).replace("|", "\\|") for h in headers)
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
