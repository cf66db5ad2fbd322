"""Experiment presets (conf/experiment/<name>.yaml): a set of runs that teaches one lesson, and
the table that compares them.

A preset holds `overrides` every run shares, `runs` (run label → its own overrides), `report`
(the metrics compared; "a - b" gives a difference, such as a train-test gap) and `seeds` (every
run is repeated once per seed, and the table shows each metric's mean ± std over them).
`nnlab train experiment=<name> [overrides]` runs them all; the user's overrides apply to every
run, and with -m their comma lists multiply the runs. A seed= of the user's replaces the
preset's seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nnlab import noise
from nnlab.config import take_argument
from nnlab.errors import UserError
from nnlab.presets import load_preset

GROUP = "experiment"


@dataclass
class Experiment:
    name: str
    overrides: list[str]
    runs: dict[str, list[str]]
    report: list[str]
    seeds: list[int] = field(default_factory=list)  # each run once per seed; [] = once


def load(name: str) -> Experiment:
    node = load_preset(GROUP, name)
    unknown = set(node) - {"overrides", "runs", "report", "seeds"}
    if unknown or not node.get("runs"):
        raise UserError(
            f"conf/experiment/{name}.yaml must hold `runs` (label → overrides) and may hold "
            f"`overrides`, `report` and `seeds`; found "
            f"{', '.join(sorted(map(str, node))) or 'nothing'}."
        )
    seeds = node.get("seeds") or []
    if not isinstance(seeds, list) or not all(type(s) is int for s in seeds):
        raise UserError(
            f"conf/experiment/{name}.yaml: `seeds` must be a list of integers, such as "
            f"[0, 1, 2]; found {seeds!r}."
        )
    runs = {str(label): [str(o) for o in (extra or [])] for label, extra in node["runs"].items()}
    overrides = [str(o) for o in node.get("overrides") or []]
    return Experiment(name, overrides, runs, node.get("report") or [], seeds)


def seed_overrides(experiment: Experiment | None, given: list[str]) -> list[list[str]]:
    """What each repeat of one run adds: seed=<s> per preset seed, or nothing when the preset
    has no seeds or the user chose the seed (a seed= of theirs wins over the preset's)."""
    if experiment is None or not experiment.seeds or any(noise.is_seed(o) for o in given):
        return [[]]
    return [[f"seed={seed}"] for seed in experiment.seeds]


def take_experiment(arguments: list[str]) -> tuple[Experiment | None, list[str]]:
    """The `experiment=<name>` argument's preset, and the other arguments."""
    chosen, rest = take_argument(arguments, GROUP)
    if len(chosen) > 1:
        raise UserError(f"Give one experiment at a time; got {', '.join(chosen)}.")
    return (load(chosen[0]) if chosen else None), rest


def run_overrides(experiment: Experiment, label: str, extra: list[str]) -> list[str]:
    """One run's overrides: the preset's, the run's own, then the user's (last wins)."""
    # quoted: a label may hold characters the override grammar reserves (l2=1e-4)
    named = [f"name='{experiment.name}-{label}'", f"tags=['{experiment.name}']"]
    return [*experiment.overrides, *experiment.runs[label], *named, *extra]


def value(metrics: dict[str, Any], column: str) -> float | None:
    """A report column's value: a metric, or the difference "a - b" of two."""
    if " - " in column:
        a, b = (value(metrics, part.strip()) for part in column.split(" - ", 1))
        return None if a is None or b is None else a - b
    found = metrics.get(column)
    return float(found) if isinstance(found, int | float) else None


def report_table(
    experiment: Experiment, rows: list[tuple[str, list[dict[str, Any]]]]
) -> tuple[list[str], list[list[str]], str]:
    """(headers, rows, legend) of the comparison: one row per setting, each report column's
    mean ± std over its runs (seeds), a test accuracy's 95% interval, and n when runs repeat."""
    repeated = any(len(runs) > 1 for _, runs in rows)
    headers = ["run", *(["n"] if repeated else []), *experiment.report]
    cells = [
        [label, *([str(len(runs))] if repeated else [])]
        + [noise.cell(runs, column, value) for column in experiment.report]
        for label, runs in rows
    ]
    every = [m for _, runs in rows for m in runs]
    return headers, cells, noise.legend(every, experiment.report, repeated)


def write_markdown(
    experiment: Experiment, rows: list[tuple[str, list[dict[str, Any]]]], output_dir: str
) -> Path:
    """The comparison as a Markdown table in <output_dir>/experiments/, ready for a report."""
    headers, cells, legend = report_table(experiment, rows)
    lines = [
        f"| {' | '.join(headers)} |",
        f"|{'|'.join('---' for _ in headers)}|",
        *(f"| {' | '.join(row)} |" for row in cells),
    ]
    if legend:
        lines += ["", legend]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(output_dir) / "experiments" / f"{stamp}_{experiment.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {experiment.name}\n\n" + "\n".join(lines) + "\n")
    return path
