"""Run directories: everything that knows the outputs/ layout lives here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
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


def create_run_dir(root: Path, name: str) -> Path:
    """A new, empty run directory `<root>/<timestamp>_<name>[-N]`; never reuses an existing one.

    mkdir is atomic, so two runs started in the same second (even in two processes) each get
    their own directory.
    """
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


def list_runs(output_dir: str | Path, root: Path | None = None) -> list[Path]:
    """Run directories under <output_dir>/runs (or `root`, e.g. a sweep's trials/), oldest
    first."""
    root = root or runs_root(output_dir)
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


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A file beside `path` for the block to write; renamed over `path` when the block ends, or
    removed when it fails. A crash or a full disk then leaves the old file whole, and no
    half-written one behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    with written_whole(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of a metric are better (losses, errors, times)."""
    return any(word in metric for word in ("loss", "mse", "mae", "err", "time"))


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def summary(run: Path) -> dict[str, Any]:
    """What `nnlab runs` shows about one run: its metrics.json plus name, date and settings."""
    import yaml

    metrics = read_json(run / METRICS)
    config = yaml.safe_load((run / CONFIG).read_text()) or {}
    settings = _flatten(config)
    settings.update(metrics.get("choices", {}))  # model=cnn matches the group choice
    return {
        "run": run.name,
        "date": run.name[:19].replace("_", " "),
        "status": metrics.get("status", "unknown"),
        "settings": settings,
        **{k: v for k, v in metrics.items() if k not in ("choices", "versions")},
    }


def _matches(value: Any, wanted: str) -> bool:
    # a list setting (tags) matches any one of its items
    if isinstance(value, list):
        return wanted in map(str, value)
    return str(value) == wanted


def select(
    summaries: list[dict[str, Any]], filters: list[str], sort: str | None, last: int | None
) -> list[dict[str, Any]]:
    """Runs matching every key=value filter (group choice or config key), sorted best first by
    `sort` (runs without that metric go last), then the last N."""
    chosen = summaries
    for item in filters:
        key, sep, wanted = item.partition("=")
        if not sep:
            raise UserError(f"Bad filter '{item}': write key=value, for example model=cnn.")
        known = {k for s in summaries for k in (*s["settings"], "status")}
        if summaries and key not in known:
            raise UserError(f"Unknown filter key '{key}'." + did_you_mean(key, sorted(known)))
        chosen = [s for s in chosen if _matches(s["settings"].get(key, s.get(key)), wanted)]
    if last:
        chosen = chosen[-last:]
    if sort:
        metrics = {k for s in summaries for k in s if "/" in k or k.endswith("_s")}
        if summaries and sort not in metrics:
            raise UserError(
                f"No run has the metric '{sort}'. Metrics: {', '.join(sorted(metrics))}."
                + did_you_mean(sort, sorted(metrics))
            )
        sign = 1 if lower_is_better(sort) else -1
        has = [s for s in chosen if isinstance(s.get(sort), (int, float))]
        chosen = sorted(has, key=lambda s: sign * s[sort]) + [s for s in chosen if s not in has]
    return chosen
