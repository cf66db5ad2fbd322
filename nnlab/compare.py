"""`nnlab compare`: the settings that differ between runs, their final metrics side by side, and
one figure overlaying their curves. Reads run files only: no torch, no Lightning."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlab import plots, runs
from nnlab.errors import UserError, choice_error

ABSENT = "-"  # a setting or metric a run does not have
STAGES = ("train/", "val/", "test/", "trainset/")
TOTALS = ("epochs", "wall_time_s", "status")
FORMATS = ("png", "svg", "pdf")  # what --out may end with


@dataclass
class Comparison:
    runs: list[Path]
    labels: list[str]  # one short name per run, as the table's columns and the figure's legend
    settings: dict[str, list[Any]] = field(default_factory=dict)  # key -> value per run
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # label -> columns
    notes: list[str] = field(default_factory=list)


def resolve_runs(targets: list[str], output_dir: Path) -> list[Path]:
    """The run directories of `targets` (directory, name or 'latest'); one UserError naming
    every target that is not a run, and one for a run given twice."""
    found: dict[str, Path] = {}
    unknown: dict[str, str] = {}
    for target in targets:
        try:
            run, _ = runs.resolve_target(target, output_dir)
        except UserError as err:
            unknown[target] = str(err)
            continue
        if run is None:  # a .ckpt copied out of its run: no settings or curves to compare
            unknown[target] = f"'{target}' is a checkpoint file outside any run directory."
            continue
        twice = next((t for t, r in found.items() if r.resolve() == run.resolve()), None)
        if twice is not None:
            raise UserError(
                f"'{twice}' and '{target}' are the same run ({run}): give different runs."
            )
        found[target] = run
    if len(unknown) == 1:
        raise UserError(next(iter(unknown.values())))
    if unknown:
        listed = ", ".join(f"'{t}'" for t in unknown)
        raise UserError(
            f"These are not runs: {listed}. Give run directories (outputs/runs/<run>), run "
            f"names or 'latest'; `nnlab runs` lists the runs in {output_dir}."
        )
    if len(found) < 2:
        raise UserError(f"Compare needs at least two runs; got {len(found)}.")
    return list(found.values())


def compare(run_dirs: list[Path]) -> Comparison:
    """Settings, final metrics and per-epoch curves of the runs; DamagedRun when a run's
    config.yaml or metrics.json cannot be read."""
    summaries = []
    for run in run_dirs:
        runs.read_config(run)  # a damaged run stops here, naming its file
        runs.read_metrics(run)
        summaries.append(runs.summary(run))
    labels = _labels(run_dirs, summaries)
    found = Comparison(list(run_dirs), labels)
    found.settings = _differing([s["settings"] for s in summaries])
    found.metrics = _side_by_side(summaries)
    for run, label in zip(run_dirs, labels, strict=True):
        path = run / runs.METRICS_CSV
        try:
            found.curves[label] = plots.read_epochs(path)
        except FileNotFoundError:
            found.notes.append(
                f"{label} has no {runs.METRICS_CSV} (a run from before nnlab wrote one): "
                f"compared on final metrics only."
            )
        except (OSError, ValueError, csv.Error) as err:
            found.notes.append(f"{label}: {path} cannot be read ({err}): final metrics only.")
    return found


def _labels(run_dirs: list[Path], summaries: list[dict[str, Any]]) -> list[str]:
    """The user's name= of each run, else the short id `nnlab runs` shows; numbered when two
    runs would share one."""
    labels = [
        str(s.get("name") or s.get("id") or r.name)
        for r, s in zip(run_dirs, summaries, strict=True)
    ]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{i}" for i, label in enumerate(labels, 1)]
    return labels


def _differing(settings: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The settings whose values are not the same in every run: the group choices and
    top-level keys (model=cnn, seed) first, then dotted config keys."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    keys.sort(key=lambda k: "." in k)  # stable: each part keeps the config's order
    table = {k: [s.get(k, ABSENT) for s in settings] for k in keys}
    return {k: values for k, values in table.items() if len({repr(v) for v in values}) > 1}


def _side_by_side(summaries: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Final metrics by stage (train, val, test), then epochs, wall time and status."""
    names = {k for s in summaries for k in s if k.startswith(STAGES) and not k.endswith("/lr")}
    ordered = [k for stage in STAGES for k in sorted(n for n in names if n.startswith(stage))]
    return {k: [s.get(k, ABSENT) for s in summaries] for k in [*ordered, *TOTALS]}


def check_out(out: Path) -> None:
    """UserError for an --out that cannot take the figure."""
    kind = out.suffix.lstrip(".").lower()
    if kind not in FORMATS:
        raise choice_error("--out file type", out.suffix or "(none)", [f".{f}" for f in FORMATS])
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: give a file name, such as {out}/compare.png.")


def write_overlay(found: Comparison, out: Path) -> list[str]:
    """The overlay figure at `out`, written whole; the metrics it draws ([] and no file when no
    run has per-epoch metrics)."""
    if not found.curves:
        found.notes.append(f"No run has a {runs.METRICS_CSV}: no figure to draw.")
        return []
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with runs.written_whole(out) as partial:
            return plots.overlay(found.curves, partial, out.suffix.lstrip(".").lower())
    except ValueError as err:  # curves without a single value to draw
        found.notes.append(f"No figure: {err}.")
        return []
