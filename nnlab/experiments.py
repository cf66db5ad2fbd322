"""Experiment presets (conf/experiment/<name>.yaml): a set of runs that teaches one lesson, and
the table that compares them.

A preset holds `overrides` every run shares, `runs` (run label → its own overrides) and `report`
(the metrics compared; "a - b" gives a difference, such as a train-test gap). `nnlab train
experiment=<name> [overrides]` runs them all; the user's overrides apply to every run, and with
-m their comma lists multiply the runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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


def load(name: str) -> Experiment:
    node = load_preset(GROUP, name)
    unknown = set(node) - {"overrides", "runs", "report"}
    if unknown or not node.get("runs"):
        raise UserError(
            f"conf/experiment/{name}.yaml must hold `runs` (label → overrides) and may hold "
            f"`overrides` and `report`; found {', '.join(sorted(map(str, node))) or 'nothing'}."
        )
    runs = {str(label): [str(o) for o in (extra or [])] for label, extra in node["runs"].items()}
    return Experiment(
        name, [str(o) for o in node.get("overrides") or []], runs, node.get("report") or []
    )


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


def fmt(number: float | None) -> str:
    if number is None or not math.isfinite(number):
        return "—" if number is None else str(number)
    return f"{number:.2e}" if number != 0 and abs(number) < 1e-3 else f"{number:.4f}"


def write_markdown(
    experiment: Experiment, rows: list[tuple[str, dict[str, Any]]], output_dir: str
) -> Path:
    """The comparison as a Markdown table in <output_dir>/experiments/, ready for a report."""
    header = ["run", *experiment.report]
    lines = [
        f"| {' | '.join(header)} |",
        f"|{'|'.join('---' for _ in header)}|",
        *(
            f"| {label} | {' | '.join(fmt(value(m, c)) for c in experiment.report)} |"
            for label, m in rows
        ),
    ]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(output_dir) / "experiments" / f"{stamp}_{experiment.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {experiment.name}\n\n" + "\n".join(lines) + "\n")
    return path
