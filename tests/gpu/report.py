"""The table of results: printed, and written as results.json and results.md for the docs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.gpu.results import PathResult

COLUMNS = ("path", "result", "s", "steps/s", "ms/epoch", "hand ms/epoch", "nnlab/hand", "notes")


def _number(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def rows(results: list[PathResult]) -> list[list[str]]:
    """One row of strings per path; a failure's note is its error's last line."""
    return [
        [
            r.name,
            "passed" if r.passed else "FAILED",
            _number(r.seconds),
            _number(r.steps_per_s),
            _number(r.ms_per_epoch, 2),
            _number(r.hand_ms_per_epoch, 2),
            _number(r.vs_hand, 2),
            r.covers if r.passed else str(r.error),
        ]
        for r in results
    ]


def text_table(results: list[PathResult], width: int = 100) -> str:
    """Aligned columns for the terminal; long notes cut to `width` characters."""
    body = [[*row[:-1], row[-1][:width]] for row in rows(results)]
    widths = [max(len(line[i]) for line in [list(COLUMNS), *body]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [list(COLUMNS), *body]
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def markdown(results: list[PathResult], header: str) -> str:
    cells = [row[:-1] + [row[-1].replace("|", "\\|")] for row in rows(results)]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return f"{header}\n\n" + "\n".join(lines) + "\n"


def write(out: Path, results: list[PathResult], header: str, meta: dict) -> None:
    """results.json (every figure, every override) and results.md (the table) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    document = {**meta, "paths": [r.as_dict() for r in results]}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results, header))
