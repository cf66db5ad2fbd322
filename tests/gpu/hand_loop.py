"""The same model in a hand-written PyTorch loop on the same device: the yardstick for a path's
throughput. tests/perf/bench_overhead.py's hand loop (the nnlab-built model, its seed, Adam
lr=1e-3, shuffled batches sliced from in-memory tensors, validation every epoch, steady-state
time per epoch after its warm-up epochs), with the data on the device and the run's autocast.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnlab.config import compose_config
from tests.perf.bench_overhead import as_a_plain_script, per_epoch_ms, setup

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
Split = tuple[Tensor, Tensor]


def _stop(data: Split, bs: int, limit: int | None) -> int:
    return len(data[0]) if limit is None else min(len(data[0]), limit * bs)


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: Split,
    bs: int,
    dtype: torch.dtype | None,
    limit: int | None,
) -> None:
    model.train()
    x, y = data
    order = torch.randperm(len(x), device=x.device)
    xs, ys = x[order], y[order]
    for i in range(0, _stop(data, bs, limit), bs):
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(xs[i : i + bs]), ys[i : i + bs])
        opt.zero_grad()
        scaler.scale(loss).backward()  # the scaler does nothing unless fp16
        scaler.step(opt)
        scaler.update()


def _validate(
    model: nn.Module, data: Split, bs: int, dtype: torch.dtype | None, limit: int | None
) -> tuple[float, float]:
    """Validation loss and accuracy, read back once at the end (one host sync, as nnlab's
    epoch log)."""
    model.eval()
    x, y = data
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    autocast = torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None)
    with torch.no_grad(), autocast:
        for i in range(0, _stop(data, bs, limit), bs):
            logits, target = model(x[i : i + bs]), y[i : i + bs]
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(dim=1) == target).sum()
    n = _stop(data, bs, limit)
    return loss_sum.item() / n, correct.item() / n


def hand_loop(
    model_name: str, accelerator: str, precision: str, epochs: int, limit: int | None, out: Path
) -> None:
    """Train `epochs` epochs of `model_name` on digits (at most `limit` batches each) and write
    the steady-state ms per epoch, the steps per epoch and the device's name to `out`."""
    cfg, _ = compose_config([f"model={model_name}", "data=digits"])
    bs = int(cfg.data.batch_size)
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    model, splits = setup(model_name, bs)
    model.to(device)
    train, val = (tuple(t.to(device) for t in splits[s]) for s in ("train", "val"))
    dtype = AUTOCAST.get(precision)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    marks = []
    with as_a_plain_script():
        for _ in range(epochs):
            marks.append(time.perf_counter())  # the last epoch's .item() synced the device
            _train_epoch(model, opt, scaler, train, bs, dtype, limit)
            _validate(model, val, bs, dtype, limit)
        marks.append(time.perf_counter())
    result = {
        "ms_per_epoch": per_epoch_ms(marks),
        "steps_per_epoch": math.ceil(_stop(train, bs, limit) / bs),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    out.write_text(json.dumps(result))
