"""Run directories: everything that knows the outputs/ layout lives here."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from nnlab.errors import UserError, did_you_mean

RUNS = "runs"
CONFIG = "config.yaml"
OVERRIDES = "overrides.yaml"
METRICS = "metrics.json"
EVAL = "eval.json"
CHECKPOINTS = "checkpoints"
BEST = "best.ckpt"
LAST = "last.ckpt"
TB = "tb"
SAMPLES = "samples.png"  # GAN runs: a grid of generated images


def runs_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / RUNS


def create_run_dir(output_dir: str | Path, name: str) -> Path:
    """A new, empty run directory `<timestamp>_<name>[-N]`; never reuses an existing one.

    mkdir is atomic, so two runs started in the same second (even in two processes) each get
    their own directory.
    """
    root = runs_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"
    base = f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{safe}"
    for n in range(10_000):
        candidate = root / (base if n == 0 else f"{base}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a run directory under {root}")


def list_runs(output_dir: str | Path) -> list[Path]:
    """Run directories, oldest first."""
    root = runs_root(output_dir)
    if not root.is_dir():
        return []
    runs = [d for d in root.iterdir() if d.is_dir() and (d / CONFIG).exists()]
    return sorted(runs, key=lambda d: (d.name[:19], d.stat().st_ctime_ns))


def resolve_target(target: str, output_dir: str | Path) -> tuple[Path | None, Path]:
    """(run directory or None, checkpoint) for 'latest', a run directory/name, or a .ckpt file."""
    if target == "latest":
        runs = list_runs(output_dir)
        if not runs:
            raise UserError(
                f"There are no runs in {runs_root(output_dir).resolve()} yet: train one first "
                f"with `nnlab train`."
            )
        return runs[-1], checkpoint_of(runs[-1])
    path = Path(target)
    if not path.exists() and (runs_root(output_dir) / target).exists():
        path = runs_root(output_dir) / target
    if path.is_file():
        run = path.parent.parent
        return (run if (run / CONFIG).exists() else None), path
    if path.is_dir() and (path / CONFIG).exists():
        return path, checkpoint_of(path)
    names = [d.name for d in list_runs(output_dir)]
    recent = ", ".join(names[-5:]) if names else "none yet"
    raise UserError(
        f"'{target}' is not a run directory or checkpoint file. Give a run directory "
        f"(outputs/runs/<run>), a run name, a .ckpt file, or 'latest'. Recent runs: {recent}."
        + did_you_mean(path.name, names)
    )


def checkpoint_of(run: Path) -> Path:
    """The run's best checkpoint, else its last one."""
    for name in (BEST, LAST):
        if (run / CHECKPOINTS / name).exists():
            return run / CHECKPOINTS / name
    raise UserError(
        f"Run {run} has no checkpoint in {run / CHECKPOINTS} (did it finish an epoch?)."
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    # Write then rename so a crash never leaves half a metrics file.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
