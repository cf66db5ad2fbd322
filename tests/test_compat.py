"""nnlab/compat.py: what each private touch does, and a canary for each that fails loudly when an
upgrade of Lightning, torch, TensorBoard, Rich or Optuna changes the private name it relies on.

A failing canary means: read the entry in nnlab/compat.py, check the new version's code, and
update the entry (and the versions it names), or drop it if the upstream fix has landed."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.trainer.connectors.logger_connector.result import (
    _Metadata,
    _ResultCollection,
    _ResultMetric,
)

from nnlab import compat
from nnlab.compat import metric_moves_skipped, sigterm_broadcast_skipped


def logged(value: torch.Tensor) -> _ResultMetric:
    metric = _ResultMetric(_Metadata(fx="on_train_epoch_end", name="train/loss"), True)
    metric.update(value, 4)
    return metric


# -- the metric move in self.log ----------------------------------------------------------------
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


def test_canary_result_metric_move():
    """pytorch-lightning 2.6.6: _ResultMetric.to(self, *args, **kwargs), called by
    _ResultCollection.log as `self[key].to(value.device)`, and still deep-copying on a no-op
    move (Lightning-AI/pytorch-lightning#20388). If the last assertion fails, #21769 has been
    released: drop compat.metric_moves_skipped."""
    assert compat._result_metric() is _ResultMetric, "_ResultMetric.to changed shape"
    assert ".to(value.device)" in inspect.getsource(_ResultCollection.log)
    metric = logged(torch.tensor(0.5))
    meta = metric.meta
    metric.to(torch.device("cpu"))
    assert metric.meta is not meta, "Lightning no longer copies on a no-op move: drop the fix"


def test_without_the_private_class_the_move_is_lightnings(monkeypatch):
    monkeypatch.setattr(compat, "_result_metric", lambda: None)
    released = _ResultMetric.to
    with metric_moves_skipped():
        assert _ResultMetric.to is released


# -- the SIGTERM broadcast ----------------------------------------------------------------------
def test_sigterm_is_noted_and_passed_on_without_a_collective(monkeypatch):
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


def test_canary_sigterm_handler_and_per_step_broadcast():
    """pytorch-lightning 2.6.6: the handler (_SignalConnector._sigterm_notifier_fn(self, signum,
    _)) is registered by register_signal_handlers, and the training loop broadcasts the flag
    at every step (_TrainingEpochLoop._broadcast_sigterm_tensor): the premise of the skip."""
    from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
    from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector

    assert compat._sigterm_connector() is _SignalConnector, "the SIGTERM skip is off"
    assert "self._sigterm_notifier_fn" in inspect.getsource(
        _SignalConnector.register_signal_handlers
    )
    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(_TrainingEpochLoop.advance)
    assert "received_sigterm" in inspect.getsource(_TrainingEpochLoop._broadcast_sigterm_tensor)


@pytest.mark.parametrize("version", ["2.4.0", "2.5.1", "2.5.1.post0"])
def test_below_2_5_2_lightnings_sigterm_handler_is_left(monkeypatch, version):
    """Before 2.5.2 Lightning had no per-step broadcast: skipping its handler's would lose the
    signal, and there was no handler broadcast to hang."""
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector

    monkeypatch.setattr(pl, "__version__", version)
    released = _SignalConnector._sigterm_notifier_fn
    with sigterm_broadcast_skipped():
        assert _SignalConnector._sigterm_notifier_fn is released


def test_versions_compare_by_their_numbers():
    assert compat._version("2.6.6") == (2, 6, 6)
    assert compat._version("2.10.0rc1") == (2, 10, 0) > compat.SIGTERM_PREMISE_SINCE
    assert compat._version("2.5.2+cu124") == compat.SIGTERM_PREMISE_SINCE
    assert compat._version("2.5.1.post0") < compat.SIGTERM_PREMISE_SINCE


def test_every_fit_patch_is_undone_after_the_fit():
    from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector

    before = (_ResultMetric.to, _SignalConnector._sigterm_notifier_fn)
    with compat.patched_for_fit():
        assert _ResultMetric.to is not before[0]
        assert _SignalConnector._sigterm_notifier_fn is not before[1]
    assert (_ResultMetric.to, _SignalConnector._sigterm_notifier_fn) == before


# -- the hook attribute the tasks set plainly ---------------------------------------------------
def test_canary_lightning_sets_current_fx_name_around_hooks():
    """pytorch-lightning 2.6.6 sets LightningModule._current_fx_name around every hook call;
    the tasks set it with object.__setattr__ (tasks/supervised.py _PLAIN_ATTRS)."""
    import pytorch_lightning as pl
    from pytorch_lightning.trainer import call

    from nnlab.tasks.supervised import _PLAIN_ATTRS

    assert compat.LIGHTNING_PER_HOOK_ATTRS <= _PLAIN_ATTRS
    for name in compat.LIGHTNING_PER_HOOK_ATTRS:
        assert name in vars(pl.LightningModule()), name
        assert f"pl_module.{name} = hook_name" in inspect.getsource(
            call._call_lightning_module_hook
        ), name


# -- ModelCheckpoint's monitor candidates -------------------------------------------------------
def test_canary_monitor_candidates():
    """pytorch-lightning 2.6.6: ModelCheckpoint._monitor_candidates(self, trainer); nnlab's
    copy gives the same candidates (tests/test_checkpoint_io.py checks more cases)."""
    from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint

    from nnlab.callbacks.checkpoint import ModelCheckpoint

    assert compat._takes(LightningModelCheckpoint._monitor_candidates, "self", "trainer")
    assert ModelCheckpoint._monitor_candidates is compat._monitor_candidates
    metrics = {"val/acc": torch.tensor(0.75), "epoch": torch.tensor(4.0)}
    fake = SimpleNamespace(callback_metrics=metrics, current_epoch=3, global_step=57)
    ours = ModelCheckpoint()._monitor_candidates(fake)
    theirs = LightningModelCheckpoint()._monitor_candidates(fake)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)


def test_a_changed_monitor_candidates_is_left_to_lightning(monkeypatch):
    from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint

    def changed(self, trainer, *, extra):  # a new signature in some later Lightning
        return {}

    monkeypatch.setattr(LightningModelCheckpoint, "_monitor_candidates", changed)

    @compat.cheap_monitor_candidates
    class Mine(LightningModelCheckpoint):
        pass

    assert Mine._monitor_candidates is changed


# -- the Rich bar's redraws ---------------------------------------------------------------------
def test_canary_rich_soft_refresh():
    """pytorch-lightning 2.6.6 CustomProgress.soft_refresh() asks the bar's refresh thread to
    redraw; rich 15.0.0 redraws at once (Progress.refresh) when a bar is added or reset."""
    from pytorch_lightning.callbacks.progress.rich_progress import CustomProgress, _RefreshThread
    from rich.progress import Progress

    assert compat._takes(CustomProgress.soft_refresh, "self")
    for method in (Progress.add_task, Progress.reset):
        assert "self.refresh()" in inspect.getsource(method), method.__name__
    progress = CustomProgress(auto_refresh=True, refresh_per_second=10)
    thread = _RefreshThread(progress.live, 10)  # never started: no drawing here
    progress.live._refresh_thread = thread
    compat.defer_rich_redraws(progress)
    progress.refresh()
    assert thread.refresh_cond is True, "a redraw is asked of the thread, not drawn here"


def test_a_progress_without_soft_refresh_redraws_as_released():
    from rich.progress import Progress

    progress = Progress()
    compat.defer_rich_redraws(progress)
    assert "refresh" not in vars(progress)


# -- TensorBoard's event writer -----------------------------------------------------------------
def test_canary_summary_writer_file_writer(tmp_path):
    """torch 2.14.1 SummaryWriter._get_file_writer(self), through which add_scalar writes."""
    from torch.utils.tensorboard import SummaryWriter

    assert compat._takes(SummaryWriter._get_file_writer, "self")
    assert "self._get_file_writer().add_summary" in inspect.getsource(SummaryWriter.add_scalar)
    writer = SummaryWriter(str(tmp_path))
    try:
        assert compat.file_writer(writer) is writer.file_writer
    finally:
        writer.close()


def test_without_the_private_writer_scalars_go_one_event_each():
    from nnlab.logger import write_scalars

    written = []
    public_only = SimpleNamespace(add_scalar=lambda *args: written.append(args))
    assert compat.file_writer(public_only) is None
    write_scalars(public_only, {"train/loss": 0.5, "val/acc": 0.75}, 40)
    assert written == [("train/loss", 0.5, 40), ("val/acc", 0.75, 40)]


# -- torch's state_dict versions ----------------------------------------------------------------
def test_canary_state_dict_metadata():
    """torch 2.14.1: state_dict() carries `_metadata` (each module's version), which
    load_state_dict reads; a checkpoint snapshot keeps it (nnlab/checkpoint_io.py)."""
    from nnlab.checkpoint_io import snapshot

    state = torch.nn.BatchNorm1d(2).state_dict()
    assert state._metadata[""]["version"] == 2
    assert 'getattr(state_dict, "_metadata", None)' in inspect.getsource(
        torch.nn.Module.load_state_dict
    )
    assert snapshot(state)._metadata == state._metadata


# -- Optuna: a user attribute on a dead worker's trial ------------------------------------------
def _running_trial() -> tuple[object, object]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="canary")
    study.ask()
    return study, study.get_trials(deepcopy=False)[0]


def test_canary_optuna_study_storage_and_trial_id():
    """optuna 5.0.0: Study._storage (a BaseStorage, whose set_trial_user_attr(trial_id, key,
    value) is public) and FrozenTrial._trial_id."""
    from optuna.storages import BaseStorage

    study, trial = _running_trial()
    assert isinstance(study._storage, BaseStorage)
    assert isinstance(trial._trial_id, int)
    assert compat._takes(BaseStorage.set_trial_user_attr, "self", "trial_id", "key", "value")
    compat.set_trial_user_attr(study, trial, "interrupted", True)
    assert study.get_trials()[0].user_attrs == {"interrupted": True}


def test_without_the_private_names_the_storage_is_reopened():
    study, trial = _running_trial()
    renamed_study = SimpleNamespace(study_name=study.study_name)  # no _storage
    renamed_trial = SimpleNamespace(number=trial.number)  # no _trial_id
    compat.set_trial_user_attr(
        renamed_study, renamed_trial, "interrupted", True, reopen=lambda: study._storage
    )
    assert study.get_trials()[0].user_attrs == {"interrupted": True}
    with pytest.raises(RuntimeError, match="verified on optuna 5.0.0"):
        compat.set_trial_user_attr(renamed_study, renamed_trial, "interrupted", True)


# -- the profiler: a public route, no patch -----------------------------------------------------
def test_the_default_profiler_costs_nothing_and_a_chosen_one_still_records(tmp_path):
    import pytorch_lightning as pl
    from omegaconf import open_dict
    from pytorch_lightning.profilers import PassThroughProfiler, SimpleProfiler

    from nnlab.build import build
    from nnlab.config import compose_config
    from nnlab.trainer import QuietProfiler, make_trainer

    released = PassThroughProfiler.profile
    cfg, _ = compose_config(["trainer.enable_progress_bar=false", "logger=none"])
    _, task = build(cfg)
    quiet = make_trainer(cfg, tmp_path, task, []).profiler
    assert isinstance(quiet, QuietProfiler)
    assert quiet.profile("[Callback]x.on_train_start") is quiet.profile("run_training_batch")
    with quiet.profile("[Callback]x.on_train_start"):
        pass
    with open_dict(cfg):
        cfg.trainer.profiler = "simple"
    timed = make_trainer(cfg, tmp_path, task, []).profiler
    assert type(timed) is SimpleProfiler, "a profiler the user asks for is kept"
    with timed.profile("[Callback]x.on_train_start"):
        pass
    assert "[Callback]x.on_train_start" in timed.recorded_durations, (
        "a profiler that records still records"
    )
    assert PassThroughProfiler.profile is released, "Lightning's own profilers are not patched"
    plain = pl.Trainer(default_root_dir=tmp_path, logger=False)
    assert type(plain.profiler) is PassThroughProfiler and "profile" not in vars(plain.profiler)
