"""Scaling out and speed options: DDP on Lightning's engine, torch.compile, channels_last."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nnlab.build import build
from nnlab.config import compose_config
from nnlab.train import train
from tests.helpers import QUICK, all_runs, metrics_of


def test_ddp_on_two_cpu_processes_writes_one_run(workdir):
    # Lightning's DDP launcher starts the second process by running the command line again, so
    # this runs the installed `nnlab` script, as a user would.
    script = Path(sys.executable).parent / "nnlab"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(script), "train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.max_epochs=3"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = all_runs(workdir)  # one directory for both processes
    metrics = metrics_of(run)
    assert metrics["status"] == "finished" and metrics["epochs"] == 3
    assert metrics["test/acc"] > 0.85  # the two shards together learn the digits
    assert result.stdout.count("mlp on digits: finished") == 1  # the first process reports
    # A step is one batch in a distributed run, so the bar shows batches per second.
    assert "it/s" in result.stdout
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    events = EventAccumulator(str(run / "tb")).Reload()
    assert len(events.Scalars("val/acc")) == 3  # one writer: one point per epoch


def test_sigterm_to_every_ddp_process_ends_as_an_interruption(workdir):
    # A cluster's time limit (SLURM) signals every process of the job at once.
    script = Path(sys.executable).parent / "nnlab"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [str(script), "train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.max_epochs=2000", "trainer.enable_progress_bar=false",
         "callbacks.checkpoint_interval_s=1"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(workdir.glob("outputs/runs/*/checkpoints/last.ckpt")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)  # Lightning's own handler hung here
    finally:
        with contextlib.suppress(ProcessLookupError):  # a failed run leaves no process behind
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert stderr.count("Interrupted after") == 1 and "nnlab train --resume" in stderr
    assert "Training failed" not in stderr and "Traceback" not in stderr, stderr
    (run,) = all_runs(workdir)
    assert metrics_of(run)["status"] == "interrupted"
    assert not (run / "error.log").exists(), "an interrupted run has no error to log"
    # Both processes resume it: the second one trains beside the first, which holds its lock.
    done = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] + 1
    result = subprocess.run(
        [str(script), "train", "--resume", str(run), f"trainer.max_epochs={done + 1}"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(run)["status"] == "finished" and metrics_of(run)["epochs"] == done + 1


def test_ddp_shards_partition_every_epoch():
    from nnlab.data.base import TensorBatches

    x = torch.arange(103).float().unsqueeze(1)
    batches = TensorBatches((x, x), batch_size=8, shuffle=True, seed=3)
    batches.following(SimpleNamespace(current_epoch=5))  # both processes are in epoch 5
    seen = []
    for rank in (0, 1):
        batches._shard = lambda rank=rank: (103 // 2, rank, 2)  # as torch.distributed would say
        seen.append(torch.cat([b[0] for b in batches]).flatten().tolist())
    assert len(seen[0]) == len(seen[1]) == 51  # equal steps on both processes
    assert not set(seen[0]) & set(seen[1])  # disjoint


def test_compile_and_channels_last_options(nnlab, workdir):
    cfg, _ = compose_config(["model=cnn", "model.compile=true", "model.channels_last=true"])
    _, task = build(cfg)
    conv = next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert task.model._compiled_call_impl is not None
    # parameter names are untouched, so checkpoints stay loadable without compile
    plain, _ = compose_config(["model=cnn"])
    assert task.state_dict().keys() == build(plain)[1].state_dict().keys()
    result = nnlab(
        "train", "model=cnn", "model.channels_last=true", "model.channels=[8,16]", *QUICK
    )
    assert result.exit_code == 0, result.output


class CudaProbe(pl.Callback):
    """Whether torch asks NVML about CUDA during training (Lightning's import asks it to)."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.nvml = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")


def test_cpu_training_does_not_ask_nvml_at_every_step(workdir, monkeypatch):
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as importing Lightning leaves it
    cfg, choices = compose_config(QUICK)
    probe = CudaProbe()
    train(cfg, choices, QUICK, callbacks=[probe])
    assert probe.nvml is None, "torch.cuda.is_available() would ask NVML at every step"
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1", "restored for what follows"
