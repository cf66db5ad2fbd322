"""The Lightning slowdown nnlab works around: skipped only where Lightning's move is a no-op,
and only while nnlab trains."""

from __future__ import annotations

import torch
from pytorch_lightning.trainer.connectors.logger_connector.result import (
    _Metadata,
    _ResultCollection,
    _ResultMetric,
)

from nnlab.lightning_fixes import metric_moves_skipped, sigterm_broadcast_skipped


def logged(value: torch.Tensor) -> _ResultMetric:
    metric = _ResultMetric(_Metadata(fx="on_train_epoch_end", name="train/loss"), True)
    metric.update(value, 4)
    return metric


def test_a_metric_already_on_the_device_is_not_moved_again():
    metric = logged(torch.tensor(0.5))
    meta = metric.meta
    with metric_moves_skipped():
        assert metric.to(torch.device("cpu")) is metric
        assert metric.meta is meta, "Lightning's move would have deep-copied the metadata"


def test_a_metric_elsewhere_still_moves_with_all_its_state():
    metric = logged(torch.tensor(0.5))
    with metric_moves_skipped():
        metric.to(torch.device("meta"))
        assert metric.value.device.type == "meta"
        assert metric.cumulated_batch_size.device.type == "meta"
        assert all(default.device.type == "meta" for default in metric._defaults.values())
        meta = metric.meta
        metric.to(torch.device("meta"))
        assert metric.meta is meta, "there now: not moved twice"


def test_logged_epoch_means_are_unchanged_and_lightning_is_restored_after():
    """self.log's path with the fix in place: the epoch value is the batch-size-weighted mean."""
    released = _ResultMetric.to
    with metric_moves_skipped():
        assert _ResultMetric.to is not released
        results = _ResultCollection(training=True)
        for value, size in ((1.0, 2), (4.0, 1)):
            results.log("training_step", "loss", torch.tensor(value), batch_size=size)
        assert results["training_step.loss"].compute().item() == 2.0
    assert _ResultMetric.to is released, "other Lightning code in the process runs as released"


def test_hook_signatures_are_read_once_with_the_same_answers(monkeypatch):
    """Lightning's check whether a hook takes an argument answers as released, reading each
    hook's signature once while nnlab trains."""
    import inspect

    from pytorch_lightning.utilities import signature_utils
    from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature

    from nnlab.lightning_fixes import hook_signatures_cached

    class Module:
        def training_step(self, batch, batch_idx):
            pass

        def validation_step(self, *args):
            pass

    module = Module()
    questions = [
        (module.training_step, "batch_idx", False, None),
        (module.training_step, "dataloader_iter", True, None),
        (module.validation_step, "dataloader_idx", False, None),
        (module.validation_step, "dataloader_idx", True, None),
        (module.validation_step, "batch_idx", False, 2),
    ]
    released = [is_param_in_hook_signature(*q) for q in questions]
    assert released == [True, False, True, False, True]
    reads = []
    real = inspect.getfullargspec
    monkeypatch.setattr(inspect, "getfullargspec", lambda fn: reads.append(fn) or real(fn))
    with hook_signatures_cached():
        for _ in range(3):
            assert [is_param_in_hook_signature(*q) for q in questions] == released
    assert reads == [module.training_step, module.validation_step]
    assert signature_utils.inspect is inspect, "Lightning reads signatures afresh after the block"


def test_only_the_default_do_nothing_profiler_is_skipped(tmp_path):
    import pytorch_lightning as pl

    from nnlab.lightning_fixes import profiling_skipped

    plain = pl.Trainer(default_root_dir=tmp_path, logger=False)
    timed = pl.Trainer(default_root_dir=tmp_path, logger=False, profiler="simple")
    with profiling_skipped(plain), profiling_skipped(timed):
        with plain.profiler.profile("[Callback]x.on_train_start"):
            pass
        with timed.profiler.profile("[Callback]x.on_train_start"):
            pass
        assert "profile" in vars(plain.profiler), "the default profiler's wrapper is skipped"
    assert "profile" not in vars(plain.profiler), "Lightning's method is back after the block"
    assert "profile" not in vars(timed.profiler)
    assert "[Callback]x.on_train_start" in timed.profiler.recorded_durations, (
        "a profiler that records still records"
    )


def test_sigterm_is_noted_and_passed_on_without_a_collective(monkeypatch):
    from types import SimpleNamespace

    from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector

    released = _SignalConnector._sigterm_notifier_fn
    killed = []
    launcher = SimpleNamespace(kill=killed.append)
    connector = _SignalConnector(SimpleNamespace(strategy=SimpleNamespace(launcher=launcher)))
    connector.received_sigterm = False
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "broadcast", lambda *a, **k: 1 / 0)  # must not run
    with sigterm_broadcast_skipped():
        for _ in range(2):  # a second signal is not passed on again
            connector._sigterm_notifier_fn(15, None)
    assert connector.received_sigterm and killed == [15]
    assert _SignalConnector._sigterm_notifier_fn is released
