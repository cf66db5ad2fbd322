"""The Lightning slowdown nnlab works around: skipped only where Lightning's move is a no-op,
and only while nnlab trains."""

from __future__ import annotations

import torch
from pytorch_lightning.trainer.connectors.logger_connector.result import (
    _Metadata,
    _ResultCollection,
    _ResultMetric,
)

from nnlab.lightning_fixes import metric_moves_skipped


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
