"""Every touch of a private Lightning, torch, TensorBoard, Rich or Optuna name, in one place.

Each entry says what it touches, why, and the versions it was verified on. Verified on
pytorch-lightning 2.6.6 (lightning-fabric 2.6.6), torch 2.14.1, optuna 5.0.0, rich 15.0.0 and
tensorboard 2.21.0; pyproject.toml pins Lightning to the tested minor. Each is guarded: when the
private name is gone or has changed shape, nnlab takes the public route instead (slower, but
correct) rather than crash. tests/test_compat.py holds a canary for each, which fails loudly on
an upgrade that changes the private name, so the users never meet it first.

Torch, Lightning and Optuna are imported inside the functions: `import nnlab.cli` imports none.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

VERIFIED = {
    "pytorch_lightning": "2.6.6",
    "torch": "2.14.1",
    "optuna": "5.0.0",
    "rich": "15.0.0",
    "tensorboard": "2.21.0",
}

# Lightning sets LightningModule._current_fx_name before and after every hook it calls
# (pytorch_lightning/trainer/call.py, 2.6.6). The tasks set these names with object.__setattr__,
# skipping nn.Module's parameter, buffer and submodule bookkeeping, which costs more than the
# hook itself on small data. Were Lightning to rename it, the new name simply takes nn.Module's
# path again; the old one, set to a string or None, is harmless.
LIGHTNING_PER_HOOK_ATTRS = frozenset({"_current_fx_name"})

_MISSING = object()


@contextlib.contextmanager
def _swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """owner.name is value within the block; afterwards what owner itself held before, or, if it
    held nothing of that name (an instance using its class's method), nothing again."""
    saved = vars(owner).get(name, _MISSING)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if saved is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, saved)


def _takes(fn: Any, *names: str) -> bool:
    """Whether fn is a function whose parameters are exactly these names, in this order."""
    try:
        return tuple(inspect.signature(fn).parameters) == names
    except (TypeError, ValueError):
        return False


def _version(text: str) -> tuple[int, ...]:
    """(2, 6, 6) from '2.6.6', '2.6.6rc1' or '2.6.6+cu124': the leading numbers only."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


# -- Lightning: the metric move in self.log -----------------------------------------------------
_CONTAINERS = (dict, list, tuple)  # a tuple: `dict | list | tuple` builds a union every call


def _all_on(values: Any, device: Any, tensor: type, module: type) -> bool:
    """Whether every tensor among values (a metric's attributes), at any depth of dicts, lists
    and tuples, is on device; False for anything Lightning's move would treat specially (a
    torchmetrics Metric, a module). Empty containers, most of a metric's attributes, are passed
    over: this runs once per logged value, between epochs, where the interpreter's caches are
    cold and each visited object costs far more than in a microbenchmark. (tensor and module are
    torch's classes, passed in: compat imports no torch until it is used.)"""
    for value in values.values() if isinstance(values, dict) else values:
        if isinstance(value, tensor):
            if value.device != device:
                return False
        elif isinstance(value, _CONTAINERS):
            if value and not _all_on(value, device, tensor, module):
                return False
        elif isinstance(value, module):
            return False
    return True


def _result_metric() -> Any:
    """Lightning's _ResultMetric (the value behind each `self.log` name), or None where it is
    not the class this fix was written for: pytorch-lightning 2.6.6, whose _ResultCollection.log
    calls `self[key].to(value.device)` for every logged value."""
    try:
        from pytorch_lightning.trainer.connectors.logger_connector.result import _ResultMetric
    except ImportError:
        return None
    if not _takes(vars(_ResultMetric).get("to"), "self", "args", "kwargs"):
        return None
    return _ResultMetric


@contextlib.contextmanager
def metric_moves_skipped() -> Iterator[None]:
    """Within the block, `self.log` leaves alone a metric that is already on the value's device.

    Every `self.log` call moves the logged metric's state to the value's device, and the move
    deep-copies the metric's metadata even when nothing has to move: about 0.3 ms of the 0.5 ms
    a logged value costs (section timers around tests/perf/bench_overhead.py's MLP).
    Lightning-AI/pytorch-lightning#20388 reports it; #21769 would skip the move as this does.
    A metric whose tensors are all on the device is left as it is, which is what the move would
    give; any other call moves as Lightning does. Lightning is restored on leaving, so other
    Lightning code in the process (the benchmark's stock script) runs as released."""
    result_metric = _result_metric()
    if result_metric is None:  # Lightning reorganised: its own move, as released
        yield
        return
    import torch

    move = result_metric.to

    @functools.wraps(move)
    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        device = args[0] if len(args) == 1 and not kwargs else None
        if (
            isinstance(device, torch.device)
            and getattr(self, "is_tensor", False)
            and _all_on(vars(self), device, torch.Tensor, torch.nn.Module)
        ):
            return self
        return move(self, *args, **kwargs)

    with _swapped(result_metric, "to", to):
        yield


# -- Lightning: the SIGTERM handler's broadcast ---------------------------------------------------
SIGTERM_PREMISE_SINCE = (2, 5, 2)  # Lightning-AI/pytorch-lightning#20825, released in 2.5.2


def _sigterm_connector() -> Any:
    """Lightning's _SignalConnector where the skip below is safe, else None.

    The premise: since pytorch-lightning 2.5.2 (#20825) the SIGTERM handler broadcasts the signal
    from the first process, and the training loop broadcasts the flag again at the start of every
    training step (_TrainingEpochLoop._broadcast_sigterm_tensor). Below 2.5.2 there is neither
    broadcast (the handler cannot hang, and nothing would carry the signal across processes if
    it were changed), so Lightning's handler is left as it is."""
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
        from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector
    except ImportError:
        return None
    if _version(pl.__version__) < SIGTERM_PREMISE_SINCE:
        return None
    if not callable(getattr(_TrainingEpochLoop, "_broadcast_sigterm_tensor", None)):
        return None  # the per-step broadcast is gone: the skip would lose the signal
    if not _takes(vars(_SignalConnector).get("_sigterm_notifier_fn"), "self", "signum", "_"):
        return None
    return _SignalConnector


@contextlib.contextmanager
def sigterm_broadcast_skipped() -> Iterator[None]:
    """Within the block, Lightning's SIGTERM handler notes the signal and passes it on to the
    processes it launched, without broadcasting it from the first process.

    A handler runs wherever its process happens to be, so that broadcast can meet another
    process's different collective (the reduce of an epoch's metrics) and both wait for good:
    a cluster's time limit, which signals every process, hung a two-process CPU run about half
    the time (tests/test_scale.py). Lightning-AI/pytorch-lightning#20806 describes the stop
    this broadcast (#20825) was added for. Lightning broadcasts the flag from the first
    process again at the start of every training step, where all processes call it, and
    stops them all together there. Only where that holds (_sigterm_connector); elsewhere
    Lightning's handler runs as released."""
    connector = _sigterm_connector()
    if connector is None:
        yield
        return

    def notify(self: Any, signum: int, frame: Any) -> None:
        if not self.received_sigterm and self.trainer.strategy.launcher is not None:
            self.trainer.strategy.launcher.kill(signum)
        self.received_sigterm = True

    with _swapped(connector, "_sigterm_notifier_fn", notify):
        yield


@contextlib.contextmanager
def patched_for_fit() -> Iterator[None]:
    """Every Lightning fix here, for the length of the block (nnlab's own fit), and only then."""
    with metric_moves_skipped(), sigterm_broadcast_skipped():
        yield


# -- Lightning: ModelCheckpoint's monitor candidates --------------------------------------------
def _monitor_candidates(self: Any, trainer: Any) -> dict[str, Any]:
    """Lightning's candidates (the logged metrics, with epoch and step as integers), copied by
    clone where Lightning deep-copies: the same for a detached tensor, at 1.5 µs a metric instead
    of 30, which made 0.5 ms of a small model's epoch (two checkpoint callbacks, each epoch)."""
    from copy import deepcopy

    import torch

    candidates = {
        name: value.clone()
        if isinstance(value, torch.Tensor) and not value.requires_grad
        else deepcopy(value)
        for name, value in trainer.callback_metrics.items()
    }
    epoch, step = candidates.get("epoch"), candidates.get("step")
    candidates["epoch"] = (
        epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
    )
    candidates["step"] = (
        step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
    )
    return candidates


def cheap_monitor_candidates(cls: type) -> type:
    """Class decorator for a ModelCheckpoint subclass: its private `_monitor_candidates`
    (pytorch-lightning 2.6.6: `(self, trainer)`, called at each checkpoint to pick the best
    and fill file names) copies the metrics by clone. Where Lightning's method is missing or
    takes other arguments, the class keeps Lightning's own."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    released = getattr(ModelCheckpoint, "_monitor_candidates", None)
    if _takes(released, "self", "trainer"):
        cls._monitor_candidates = _monitor_candidates  # type: ignore[attr-defined]
    return cls


# -- Lightning + Rich: the progress bar's redraws -----------------------------------------------
def defer_rich_redraws(progress: Any) -> None:
    """Rich draws the whole bar on the calling thread whenever a bar is added or reset
    (rich 15.0.0 Progress.add_task / reset call self.refresh()), twice per epoch: 5% of a small
    model's epoch. Lightning's bar (pytorch-lightning 2.6.6, rich_progress.CustomProgress) has
    `soft_refresh()`, which only asks its refresh thread to redraw within 1/refresh_rate s;
    the final frame is drawn when the bar stops. Where that method is missing, Rich redraws
    as released."""
    soft_refresh = getattr(progress, "soft_refresh", None)
    if callable(soft_refresh) and _takes(soft_refresh):
        progress.refresh = soft_refresh


# -- torch / TensorBoard ------------------------------------------------------------------------
def file_writer(experiment: Any) -> Any:
    """The event writer behind a SummaryWriter (torch 2.14.1 torch.utils.tensorboard and
    tensorboardX alike: `_get_file_writer()`, which add_scalar itself writes through, reopening
    the file after a close), or None where there is none: the caller then writes through the
    public add_scalar, an event per value."""
    if not _has_file_writer(type(experiment)):
        return None
    writer = experiment._get_file_writer()
    return writer if callable(getattr(writer, "add_summary", None)) else None


@functools.cache
def _has_file_writer(kind: type) -> bool:
    return _takes(getattr(kind, "_get_file_writer", None), "self")


def keep_state_dict_versions(source: Any, copy: Any) -> None:
    """A state_dict (torch 2.14.1 nn.Module.state_dict) carries each module's version in its
    `_metadata` attribute, which load_state_dict hands to the modules' _load_from_state_dict
    (BatchNorm reads it). A copy of the dict keeps it; without it, loading reads versions as
    None, as for a hand-made dict."""
    metadata = getattr(source, "_metadata", None)
    if metadata is not None:
        copy._metadata = metadata


# -- Optuna -------------------------------------------------------------------------------------
def set_trial_user_attr(
    study: Any, trial: Any, key: str, value: Any, reopen: Callable[[], Any] | None = None
) -> None:
    """Set a user attribute on a trial whose process is gone (a FrozenTrial).

    Optuna's public API sets user attributes only through a live Trial. Optuna 5.0.0: the study
    keeps its storage in `study._storage` and a FrozenTrial its storage id in `_trial_id`; the
    storage's set_trial_user_attr is public. Where those names are gone, `reopen()` opens the
    study's storage afresh (the public route: slower, as it reads the storage again) and finds
    the trial by its number."""
    storage = getattr(study, "_storage", None)
    trial_id = getattr(trial, "_trial_id", None)
    if storage is None or not isinstance(trial_id, int):
        if reopen is None:
            raise RuntimeError(
                f"this Optuna ({_installed('optuna')}) no longer exposes the storage of a study "
                f"(nnlab was verified on optuna {VERIFIED['optuna']}); cannot mark trial "
                f"{trial.number}."
            )
        storage = reopen()
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.set_trial_user_attr(trial_id, key, value)


def _installed(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{distribution} {version(distribution)}"
    except PackageNotFoundError:
        return distribution
