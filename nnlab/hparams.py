"""TensorBoard's HParams view of everything under an output directory: one experiment summary
for the whole directory, one session per run.

TensorBoard reads a single experiment summary (every hyperparameter's name and domain, every
metric's name) for a log directory, and takes the first it finds when runs carry their own. So
the experiment lives in one place, `<output_dir>/.hparams/<n>/`, and each run adds its keys to
it; each run's own event file holds only its session: its values as it starts (so failed runs
are listed too) and its status as it ends. Its final metrics go to its `final` sub-run, which
the experiment names as the metrics' group.

TensorBoard keeps the first summary it reads for a tag of a run, so a rewritten experiment goes
to a new numbered directory and the old one is deleted: a board that is already open then drops
the old run and reads the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.message import DecodeError
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2
from torch.utils.tensorboard.writer import FileWriter

from nnlab import runs

EXPERIMENT_DIR = ".hparams"  # under the output directory
FINAL = "final"  # a run's sub-run (beside its curves) that holds its final metrics
MAX_DOMAIN = 50  # distinct values listed for a text setting; beyond, HParams filters by regex
HIDDEN = ("_target_", "_partial_")  # import paths: the group choice (model=mlp) says it better
# A session without an end is shown as Unknown: still running, or stopped (Ctrl-C, pruned) and
# resumable. TensorBoard keeps a session's first end, so only a final one is written.
STATUS = {"finished": api_pb2.STATUS_SUCCESS, "failed": api_pb2.STATUS_FAILURE}
_TYPES = {
    bool: api_pb2.DATA_TYPE_BOOL,
    float: api_pb2.DATA_TYPE_FLOAT64,
    str: api_pb2.DATA_TYPE_STRING,
}
_STAGES = ("test/", "val/", "train/", "trainset/")  # the order of the metric columns
_RUN_NAME = re.compile(r"(\d{4}-\d\d-\d\d)_(\d\d)-(\d\d)-(\d\d)_(.+)")

Value = bool | float | str


def session_values(config: Mapping[str, Any], choices: Mapping[str, str]) -> dict[str, Value]:
    """A run's hyperparameters as HParams lists them: its group choices (`model`: `mlp`), then
    every config key (`optimizer.lr`) but import paths; lists as JSON, null as "null"."""
    values: dict[str, Value] = {group: str(choice) for group, choice in choices.items()}
    for key, value in runs.flatten(config).items():
        if key.rpartition(".")[2] not in HIDDEN:
            values.setdefault(key, _plain(value))
    return values


def chosen(overrides: Iterable[str], values: Mapping[str, Value]) -> set[str]:
    """The settings the user typed (`model=gan`, `optimizer.lr=0.01`), as HParams names."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides} & set(values)


def session_label(run_dir: Path, root: Path) -> str:
    """The run as HParams names it (its trial id): the short id `nnlab runs` shows and other
    commands take, its name, then its day ("00-06-13 mlp_digits 2026-12-01"), or a sweep's
    trial by sweep and trial ("lr/trial-003"). TensorBoard shows about 16 characters of a
    trial id: the start time and most of the name fit, the day only tells days apart."""
    try:
        parts = run_dir.resolve().relative_to(root.resolve()).parts
    except ValueError:  # a run kept outside the output directory
        parts = (run_dir.name,)
    found = _RUN_NAME.fullmatch(parts[-1])
    if not found:
        return "/".join(parts)
    day, hours, minutes, seconds, name = found.groups()
    if len(parts) == 4 and parts[0] == "sweeps":  # sweeps/<sweep>/trials/<time>_trial-003
        return f"{parts[1]}/{name}"
    return f"{hours}-{minutes}-{seconds} {name} {day}"


def config_text(config: Mapping[str, Any], overrides: Iterable[str]) -> str:
    """The run's command and resolved config, as Markdown for TensorBoard's text view."""
    command = " ".join(["nnlab train", *overrides])
    body = yaml.safe_dump(dict(config), sort_keys=False)
    return f"`{command}`\n\n```yaml\n{body}```\n"


def start_summary(values: Mapping[str, Value], label: str) -> Summary:
    """The session's start: its hyperparameter values, grouped under its own label."""
    return summary_v2.hparams_pb(dict(values), trial_id=label)


def end_summary(status: str) -> Summary | None:
    """The session's end (None while it may still be resumed: see STATUS)."""
    if status not in STATUS:
        return None
    end = plugin_data_pb2.SessionEndInfo(status=STATUS[status], end_time_secs=time.time())
    return _summary(
        metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)
    )


def write_final(directory: Path, metrics: Mapping[str, float], step: int) -> None:
    """The final metrics as one event of the `final` sub-run, at the run's last step."""
    writer = FileWriter(str(directory))
    values = [Summary.Value(tag=tag, simple_value=value) for tag, value in metrics.items()]
    writer.add_summary(Summary(value=values), step)
    writer.close()


def update_experiment(
    root: Path,
    values: Mapping[str, Value] | None = None,
    chosen: Iterable[str] = (),
    groups: Iterable[str] = (),
    metrics: Iterable[str] = (),
) -> None:
    """Adds a run's hyperparameters (and which it chose, and which are group choices) or its
    metric names to the experiment under `root`, and writes it again if anything is new.
    Parallel runs (sweep workers) take turns under a lock."""
    directory = root / EXPERIMENT_DIR
    with _locked(directory):
        versions = _versions(directory)
        experiment = _newest(path for _, path in reversed(versions))
        before = experiment.SerializeToString(deterministic=True)
        _add_hparams(experiment, values or {}, set(chosen), set(groups))
        _add_metrics(experiment, metrics)
        if versions and experiment.SerializeToString(deterministic=True) == before:
            return
        experiment.time_created_secs = time.time()
        writer = FileWriter(str(directory / str(versions[-1][0] + 1 if versions else 1)))
        data = plugin_data_pb2.HParamsPluginData(experiment=experiment)
        writer.add_summary(_summary(metadata.EXPERIMENT_TAG, data))
        writer.close()
        for _, old in versions:
            shutil.rmtree(old, ignore_errors=True)


def read_experiment(root: Path) -> api_pb2.Experiment:
    """The experiment under `root` as last written (empty when there is none)."""
    directory = root / EXPERIMENT_DIR
    versions = _versions(directory) if directory.is_dir() else []
    return _newest(path for _, path in reversed(versions))


def _versions(directory: Path) -> list[tuple[int, Path]]:
    """The experiment's numbered directories, oldest first (a writer that died may have left
    more than one)."""
    return sorted((int(p.name), p) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / runs.LOCK, "a") as handle:
        # the kernel drops the lock as the file closes, or as its process dies however it dies
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _newest(directories: Iterable[Path]) -> api_pb2.Experiment:
    """The experiment in the newest directory that holds a readable one. A damaged one is
    passed over: the experiment only indexes the runs, and the runs to come add to it again."""
    for directory in directories:
        for path in sorted(directory.glob("events.out.tfevents.*"), reverse=True):
            with contextlib.suppress(DecodeError, ValueError, OSError):
                for event in EventFileLoader(str(path)).Load():
                    for value in event.summary.value:
                        if value.tag == metadata.EXPERIMENT_TAG:
                            content = value.metadata.plugin_data.content
                            return metadata.parse_experiment_plugin_data(content)
    return api_pb2.Experiment()


def _add_hparams(
    experiment: api_pb2.Experiment, values: Mapping[str, Value], chosen: set[str], groups: set[str]
) -> None:
    """The union of every run's settings. HParams shows the ones marked `differs` first: those
    some run's user typed, and group choices that take more than one value."""
    infos = {info.name: info for info in experiment.hparam_infos}
    for name, value in values.items():
        info = infos.get(name)
        if info is None:
            info = experiment.hparam_infos.add(name=name, type=_TYPES[type(value)])
            _first_value(info, value)
        else:
            _widen(info, value)
        if name in chosen or (name in groups and len(info.domain_discrete) > 1):
            info.differs = True


def _first_value(info: api_pb2.HParamInfo, value: Value) -> None:
    if isinstance(value, float):
        info.domain_interval.min_value = info.domain_interval.max_value = value
    else:
        info.domain_discrete.append(value)


def _widen(info: api_pb2.HParamInfo, value: Value) -> None:
    """Widens a setting's domain to hold `value`. A domain left empty stays open (no list of
    values to tick in HParams, a regex filter instead): a setting with too many values, or
    with numbers in one run and text in another."""
    if info.type != _TYPES[type(value)]:
        info.type = api_pb2.DATA_TYPE_STRING
        info.ClearField("domain_interval")
        info.ClearField("domain_discrete")
    elif isinstance(value, float):
        interval = info.domain_interval
        interval.min_value = min(interval.min_value, value)
        interval.max_value = max(interval.max_value, value)
    elif len(info.domain_discrete) and value not in list(info.domain_discrete):
        if len(info.domain_discrete) >= MAX_DOMAIN:
            info.ClearField("domain_discrete")
        else:
            info.domain_discrete.append(value)


def _add_metrics(experiment: api_pb2.Experiment, names: Iterable[str]) -> None:
    """The union of every run's final metrics, read from each run's `final` sub-run; test
    metrics first, then validation, training, training-split scores."""
    known = {info.name.tag for info in experiment.metric_infos if info.name.group == FINAL}
    if set(names) <= known:
        return

    def order(tag: str) -> tuple[int, str]:
        rank = next((i for i, stage in enumerate(_STAGES) if tag.startswith(stage)), len(_STAGES))
        return rank, tag

    experiment.ClearField("metric_infos")
    for tag in sorted(known | set(names), key=order):
        name = api_pb2.MetricName(group=FINAL, tag=tag)
        experiment.metric_infos.add(name=name, display_name=tag)


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    """A summary of the hparams plugin, as tensorboard.plugins.hparams.summary_v2 writes them."""
    summary = Summary()
    meta = metadata.create_summary_metadata(data)
    summary.value.add(tag=tag, metadata=meta, tensor=metadata.NULL_TENSOR)
    return summary


def _plain(value: Any) -> Value:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return "null" if value is None else json.dumps(value, default=str)
