"""Fixes for Lightning slowdowns on small models, and for a hang when a distributed run is told to
stop; applied only while nnlab's own fit runs."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

_CONTAINERS = (dict, list, tuple)  # a tuple: `dict | list | tuple` builds a union every call


def _all_on(values: Any, device: torch.device) -> bool:
    """Whether every tensor among values (a metric's attributes), at any depth of dicts, lists
    and tuples, is on device; False for anything Lightning's move would treat specially (a
    torchmetrics Metric). Empty containers, most of a metric's attributes, are passed over:
    this runs once per logged value, between epochs, where the interpreter's caches are cold
    and each visited object costs far more than in a microbenchmark."""
    for value in values.values() if isinstance(values, dict) else values:
        if isinstance(value, Tensor):
            if value.device != device:
                return False
        elif isinstance(value, _CONTAINERS):
            if value and not _all_on(value, device):
                return False
        elif isinstance(value, torch.nn.Module):
            return False
    return True


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
    try:
        from pytorch_lightning.trainer.connectors.logger_connector.result import _ResultMetric
    except ImportError:  # Lightning reorganised: nothing to fix here
        yield
        return
    move = _ResultMetric.to

    @functools.wraps(move)
    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        device = args[0] if len(args) == 1 and not kwargs else None
        if (
            isinstance(device, torch.device)
            and getattr(self, "is_tensor", False)
            and _all_on(vars(self), device)
        ):
            return self
        return move(self, *args, **kwargs)

    with _swapped(_ResultMetric, "to", to):
        yield


class _CachedArgspecs:
    """The `inspect` module as Lightning's signature check sees it, with getfullargspec
    remembered per callable: a bound method's parameters do not change while it lives."""

    def __init__(self) -> None:
        self._specs: dict[Any, inspect.FullArgSpec] = {}

    def getfullargspec(self, fn: Any) -> inspect.FullArgSpec:
        try:
            return self._specs[fn]
        except KeyError:
            spec = self._specs[fn] = inspect.getfullargspec(fn)
            return spec
        except TypeError:  # an unhashable callable
            return inspect.getfullargspec(fn)

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)


@contextlib.contextmanager
def hook_signatures_cached() -> Iterator[None]:
    """Within the block, Lightning reads each hook's signature once.

    Lightning asks whether a hook takes `batch_idx`, `dataloader_idx` or `dataloader_iter`
    about nine times an epoch (its loops, and every `self.log` in a training hook), each time
    through inspect.getfullargspec: 0.3 ms of a 28 ms epoch (timers around
    tests/perf/bench_overhead.py's MLP at batch 256). The answers stay the same while the hooks
    do; the cache lives only as long as the block."""
    try:
        from pytorch_lightning.utilities import signature_utils
    except ImportError:  # Lightning reorganised: nothing to fix here
        yield
        return
    if getattr(signature_utils, "inspect", None) is not inspect:
        yield
        return
    with _swapped(signature_utils, "inspect", _CachedArgspecs()):
        yield


_UNPROFILED = contextlib.nullcontext()  # stateless, so one serves every `with`


@contextlib.contextmanager
def profiling_skipped(trainer: Any) -> Iterator[None]:
    """Within the block, the trainer's do-nothing profiler takes no time.

    Lightning wraps every hook it calls, and every step of its loops, in
    `trainer.profiler.profile(name)`, about 300 times an epoch. With the default profiler,
    which records nothing, each is still a generator-based context manager entered and left:
    0.7 ms of a 28 ms epoch (tests/perf/bench_overhead.py's MLP at batch 256, side by
    side). Only a trainer whose profiler is that default is touched, and only while
    the block runs: a trainer built with a real profiler ("simple", ...) records as ever."""
    try:
        from pytorch_lightning.profilers import PassThroughProfiler
    except ImportError:  # Lightning reorganised: nothing to fix here
        yield
        return
    profiler = getattr(trainer, "profiler", None)
    if type(profiler) is not PassThroughProfiler:
        yield
        return
    with _swapped(profiler, "profile", lambda action_name: _UNPROFILED):
        yield


@contextlib.contextmanager
def applied(trainer: Any) -> Iterator[None]:
    """Every fix here, for the length of the block (the trainer's fit)."""
    with (
        metric_moves_skipped(),
        hook_signatures_cached(),
        profiling_skipped(trainer),
        sigterm_broadcast_skipped(),
    ):
        yield


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
    stops them all together there."""
    from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector

    def notify(self: _SignalConnector, signum: int, frame: Any) -> None:
        if not self.received_sigterm and self.trainer.strategy.launcher is not None:
            self.trainer.strategy.launcher.kill(signum)
        self.received_sigterm = True

    with _swapped(_SignalConnector, "_sigterm_notifier_fn", notify):
        yield
