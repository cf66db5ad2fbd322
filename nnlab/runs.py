"""Run directories: everything that knows the outputs/ layout lives here."""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from nnlab import locks
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
PREPROCESSING = "preprocessing.json"  # what the data learned from its training split
SKIPPED = "skipped.txt"  # data.skip_bad=true: the unreadable files left out, one per line
SAMPLES = "samples.png"  # GAN runs: a grid of generated images
METRICS_CSV = "metrics.csv"  # one row per epoch: step, time, lr, train/val metrics
PLOTS = "plots"  # PNG figures drawn as a run ends (nnlab/plots.py)
LOCK = ".lock"  # held by the process that writes the run: "<host> <pid>"
LOG = "log.txt"  # library warnings and log lines kept off the terminal (nnlab/run_log.py)


class DamagedRun(UserError):
    """A run file that is missing, cut short or not what nnlab writes: commands on that run stop
    (exit 2) rather than guess its contents; `nnlab runs` lists it as damaged."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(
            f"{path} is damaged: {reason}. nnlab does not guess what a run's files held: restore "
            f"the file from a copy of the run, or train the run again."
        )


def runs_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / RUNS


def create_run_dir(root: Path, name: str) -> Path:
    """A new, empty run directory `<root>/<timestamp>_<name>[-N]`; never reuses an existing one.

    mkdir is atomic, so two runs started in the same second (even in two processes) each get
    their own directory.
    """
    root.mkdir(parents=True, exist_ok=True)
    safe = safe_name(name)
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
    """(run directory or None, checkpoint) for 'latest', a run directory, a run's name (the
    newest run of that name), the short id `nnlab runs` shows, or a .ckpt file."""
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
    runs = list_runs(output_dir)
    named = newest_named(target, runs)
    if named is not None:
        return named, checkpoint_of(named)
    names = sorted({n for run in runs for n in names_of(run)} - {""})
    close = difflib.get_close_matches(Path(target).name, names, n=3, cutoff=0.5)
    recent = ", ".join(d.name for d in runs[-5:]) if runs else "none yet"
    hint = f" Closest run names: {', '.join(close)}." if close else f" Recent runs: {recent}."
    raise UserError(
        f"'{target}' is not a run directory, run name or checkpoint file. Give a run directory "
        f"(outputs/runs/<run>), a run's name (name=..., the newest run of that name), a .ckpt "
        f"file, or 'latest'; `nnlab runs` lists them.{hint}"
    )


def home_of(target: str, output_dir: str | Path) -> Path:
    """Where a command on `target` (eval, predict, export) keeps its own files: the run
    directory, or a lone checkpoint's folder. UserError when `target` names no run: torch-free,
    so that a wrong name is answered at once."""
    run_dir, ckpt = resolve_target(target, output_dir)
    return run_dir or ckpt.parent


# <date>_<time>_<name>[-N]: what create_run_dir makes
RUN_DIR_NAME = re.compile(r"^(\d{4}-\d\d-\d\d)_(\d\d-\d\d-\d\d)_(.+)$")


def _collision(run: Path) -> str:
    """The '-N' create_run_dir added because another run took the name in the same second, or
    ''. Told from a name that ends in -N by the first run's directory beside it."""
    found = re.search(r"-\d+$", run.name)
    if found and run.with_name(run.name[: found.start()]).is_dir():
        return found.group(0)
    return ""


def short_id(run: Path) -> str:
    """The time the run started, HH-MM-SS[-N]: what `nnlab runs` shows for a run without a
    name; the whole directory name for one nnlab did not name."""
    parts = RUN_DIR_NAME.match(run.name)
    return parts.group(2) + _collision(run) if parts else run.name


def names_of(run: Path) -> set[str]:
    """Every name a run answers to: its directory's name after the timestamp (with and without
    a collision's -N), which is its name= as a directory name holds it, and its short id. A
    directory nnlab did not name answers to its own name and its config's name=."""
    parts = RUN_DIR_NAME.match(run.name)
    if not parts:
        return {run.name, _config_name(run) or ""}
    suffix = parts.group(3)
    collision = _collision(run)
    return {suffix, suffix[: len(suffix) - len(collision)], short_id(run)}


def newest_named(target: str, runs: list[Path]) -> Path | None:
    """The newest of `runs` whose name= is `target`, whose directory ends in it, or whose short
    id it is; None when none is."""
    safe = safe_name(target)
    for run in reversed(runs):
        names = names_of(run)
        if target in names or safe in names:
            return run
    return None


def safe_name(name: str) -> str:
    """A run name as create_run_dir writes it into a directory name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def _config_name(run: Path) -> str | None:
    try:
        name = read_config(run).get("name")
    except DamagedRun:
        return None
    return str(name) if name else None


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
        tmp.unlink(missing_ok=True)  # a link planted at this name goes; what it points to stays
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refuse_links(run: Path) -> None:
    """UserError when the run directory holds a symbolic link: commands write into a run (eval.json,
    samples, predictions, a resumed run's files), and a link in a run from elsewhere could point
    them at any file of the user's."""
    for path in run.resolve().rglob("*"):  # the run itself may be a link of the user's
        if path.is_symlink():
            raise UserError(
                f"{path} is a symbolic link. nnlab writes into run directories and does not "
                f"write through links, which could point anywhere: replace the link with a copy "
                f"of what it points to, if you trust it, or delete it."
            )


def write_json(path: Path, data: dict[str, Any]) -> None:
    with written_whole(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    from omegaconf import OmegaConf

    with written_whole(path) as tmp:
        OmegaConf.save(OmegaConf.create(data), tmp)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _read_mapping(path: Path, parse: Any) -> dict[str, Any]:
    """A run file that must hold a non-empty mapping; DamagedRun when it does not."""
    try:
        data = parse(path.read_text())
    except FileNotFoundError:
        raise DamagedRun(path, "the file is missing") from None
    except (OSError, ValueError) as err:  # yaml's and json's errors are ValueErrors
        raise DamagedRun(path, f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        kind = "empty" if not data else f"a {type(data).__name__}, not a mapping"
        raise DamagedRun(path, f"the file is {kind}")
    return data


def read_metrics(run: Path) -> dict[str, Any]:
    """The run's metrics.json (status, group choices, metrics); DamagedRun if unreadable."""
    return _read_mapping(run / METRICS, json.loads)


def read_config(run: Path) -> dict[str, Any]:
    """The run's config.yaml as plain data; DamagedRun if unreadable or empty."""
    import yaml

    from nnlab.schemas import missing_sections

    try:
        config = _read_mapping(run / CONFIG, yaml.safe_load)
    except RecursionError:  # a hostile file of deeply nested brackets
        raise DamagedRun(run / CONFIG, "it is nested too deeply to be a config") from None
    absent = missing_sections(config)
    if absent:
        raise DamagedRun(run / CONFIG, f"it has no {', '.join(absent)} section (cut short?)")
    return config


def read_preprocessing(run: Path) -> dict[str, Any]:
    """What the run's data learned from its training split (preprocessing.json); {} for a run
    written before nnlab saved it, or whose data learns nothing; DamagedRun if unreadable."""
    if not (run / PREPROCESSING).exists():
        return {}
    return _read_mapping(run / PREPROCESSING, json.loads)


def read_overrides(run: Path) -> list[str]:
    """What the user typed for the run (overrides.yaml); DamagedRun if unreadable."""
    import yaml

    overrides = _read_mapping(run / OVERRIDES, yaml.safe_load).get("overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise DamagedRun(run / OVERRIDES, "its 'overrides' is not a list of key=value strings")
    return overrides


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of a metric are better (losses, errors, times)."""
    return any(word in metric for word in ("loss", "mse", "mae", "err", "time"))


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def summary(run: Path) -> dict[str, Any]:
    """What `nnlab runs` shows about one run: its metrics.json plus name, date and settings.
    A damaged run is listed as such, with the file and the reason, and never stops the list."""
    head = {"run": run.name, "date": run.name[:19].replace("_", " "), "id": short_id(run)}
    try:
        config, metrics = read_config(run), read_metrics(run)
    except DamagedRun as err:
        return {**head, "status": f"damaged: {err.path.name}: {err.reason}", "settings": {}}
    if config.get("name"):
        head["name"] = str(config["name"])  # the user's name=, shown before any short id
    settings = flatten(config)
    choices = metrics.get("choices")
    settings.update(choices if isinstance(choices, dict) else {})  # model=cnn: the group choice
    status = str(metrics.get("status", "unknown"))
    if status == "running" and holder(run) is None:
        status = "killed"  # its process ended without a word: SIGKILL, power loss, OOM killer
    extra = {k: v for k, v in metrics.items() if k not in ("choices", "versions", "status")}
    return {**head, "status": status, "settings": settings, **extra}


# -- one writer per run ------------------------------------------------------------------------
def holder(run: Path) -> str | None:
    """'<host> <pid>' of the live process that writes the run, or None when none does."""
    if locks.is_free(run / LOCK):
        return None  # no lock file, or one that outlived a killed writer
    try:
        return (run / LOCK).read_text().strip() or "another process"
    except OSError:
        return "another process"


@contextmanager
def locked(run: Path, patience_s: float = 2.0) -> Iterator[None]:
    """Hold the run's lock while the block writes it; UserError naming the holder when another
    live process has it. A lock left by a dead process is taken over."""
    path = run / LOCK
    deadline = time.monotonic() + patience_s
    while True:
        handle = open(path, "a+")  # held for the whole block: the lock lives on it
        if locks.try_lock(handle.fileno()):
            with suppress(FileNotFoundError):
                if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                    break  # else its holder removed it as we opened it: take the new one
        handle.close()
        if time.monotonic() > deadline:  # `nnlab runs` looks at a lock only for an instant
            raise UserError(
                f"{run} is being written by process {holder(run) or '?'} (host, PID): a run "
                f"has one writer at a time. Wait for that process to end, or stop it, then try "
                f"again."
            )
        time.sleep(0.05)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        with suppress(OSError):
            path.unlink()  # still locked: a writer waiting on this file finds it gone, retries
        handle.close()


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


def group_keys(spec: str, summaries: list[dict[str, Any]]) -> list[str]:
    """The keys of `--group-by KEY[,KEY]`: group choices or dotted config keys the runs have."""
    keys = [key.strip() for key in spec.split(",") if key.strip()]
    if not keys:
        raise UserError(
            f"Bad --group-by '{spec}': give one or more comma-separated keys, for example "
            f"--group-by optimizer or --group-by model,norm."
        )
    known = {k for s in summaries for k in s["settings"]}
    for key in keys:
        if summaries and key not in known:
            raise UserError(
                f"Unknown --group-by key '{key}': give a config group (model, optimizer, norm, "
                f"...) or a config key (optimizer.lr, seed)." + did_you_mean(key, sorted(known))
            )
    return keys


class RunRecord:
    """A run's files as training goes: config.yaml, overrides.yaml, preprocessing.json (what
    the data learned from its training split, when it learned anything), and metrics.json, whose
    `status` moves from running to finished, failed or interrupted (`nnlab runs` shows a running
    run whose writer died as killed). Only the first process of a distributed run writes, and
    every file is replaced whole. A new run's files are written as it begins; a resumed run's
    only once its training starts (`start`), so a resume that is refused or fails before then
    leaves every file of the run as it was."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        overrides: list[str],
        lead: bool,
        resumed: bool,
        preprocessing: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir, self.config, self.overrides = run_dir, config, list(overrides)
        self.preprocessing = preprocessing or {}
        self.lead, self.resumed = lead, resumed
        self.started = False
        self.summary: dict[str, Any] = {}
        # a resumed run reports its whole training time, its earlier sessions' too
        before = read_metrics(run_dir) if resumed else {}
        wall = before.get("wall_time_s", 0.0)
        # an interrupted session wrote no fit time; its wall time, from the fit's start, is all fit
        self.earlier = {"fit_time_s": before.get("fit_time_s", wall), "wall_time_s": wall}

    def begin(self, summary: dict[str, Any]) -> None:
        """The run's opening record (status running); written now unless the run is resumed."""
        self.summary = {"status": "running", **summary}
        if not self.resumed:
            self.start()

    def start(self) -> None:
        """Training has started: from here on the run's files say so."""
        if self.started:
            return
        self.started = True
        if self.lead:
            write_yaml(self.run_dir / CONFIG, self.config)
            write_yaml(self.run_dir / OVERRIDES, {"overrides": self.overrides})
            if self.preprocessing:
                write_json(self.run_dir / PREPROCESSING, self.preprocessing)
        self.save()

    def save(self) -> None:
        if self.lead and self.started:
            write_json(self.run_dir / METRICS, self.summary)

    def end(self, status: str) -> None:
        self.summary["status"] = status
        self.save()

    def list_skipped(self, names: list[str]) -> None:
        """skipped.txt: the input files left out as unreadable, one per line (none: no file)."""
        if self.lead and self.started and names:
            with written_whole(self.run_dir / SKIPPED) as partial:
                partial.write_text("".join(f"{name}\n" for name in names))

    def log_error(self, text: str) -> None:
        """error.log, the traceback of a failed run (not of a resume that never started)."""
        if self.lead and self.started:
            with written_whole(self.run_dir / "error.log") as log:
                log.write_text(text)
