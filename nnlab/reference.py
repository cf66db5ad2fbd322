"""A reference classifier that judges generated images: trained once per dataset, then cached.

A GAN's losses say little about its samples. Instead nnlab asks a CNN trained on the real data
what each sample shows and how sure it is: good samples are classified confidently, and a GAN
that covers the data spreads them over every class.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nnlab.data.base import TensorDataModule
from nnlab.models.cnn import build_cnn
from nnlab.tasks.classification import ClassificationTask
from nnlab.tasks.optim import constant_lr

CONFIDENT = 0.9  # a sample counts as recognizable when the classifier gives it ≥ this probability
REFERENCE_EPOCHS = 20
# Keys that change batching, not the data: the same cached classifier serves every value.
_NOT_DATA = ("batch_size", "seed")
# The classifier's architecture, spelled out: cached state dicts must keep fitting it whatever
# the builder's defaults become.
_ARCHITECTURE = {
    "channels": (32, 64),
    "kernel_size": 3,
    "residual": False,
    "fc_hidden": 128,
    "dropout": 0.25,
    "norm": "batch",
    "norm_groups": 8,
    "activation": "relu",
}


@dataclass
class Judgement:
    """What the reference classifier makes of a set of images."""

    confident: float  # share of images classified with probability ≥ CONFIDENT
    confidence: float  # mean top-class probability
    classes: int  # classes that appear among the confident images
    min_share: float  # smallest class share among the confident images (0 if a class is missing)
    score: float  # confident × balance, where balance = exp(entropy of the class shares) / K

    def metrics(self, stage: str) -> dict[str, float]:
        return {f"{stage}/sample_{k}": float(v) for k, v in self.__dict__.items()}


class Judge:
    """Scores images with a frozen classifier. Deliberately not an nn.Module: it must stay out of
    the GAN's state_dict and checkpoints."""

    def __init__(self, classifier: nn.Module, num_classes: int, real_test_acc: float) -> None:
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_classes = num_classes
        self.real_test_acc = real_test_acc

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Judgement:
        probs = self.classifier.to(images.device)(images).softmax(dim=1)
        confidence, label = probs.max(dim=1)
        sure = confidence >= CONFIDENT
        counts = torch.bincount(label[sure], minlength=self.num_classes).float()
        share = counts / counts.sum().clamp_min(1)
        entropy = -(share[share > 0] * share[share > 0].log()).sum()
        balance = math.exp(float(entropy)) / self.num_classes if counts.sum() > 0 else 0.0
        confident = float(sure.float().mean())
        return Judgement(
            confident=confident,
            confidence=float(confidence.mean()),
            classes=int((counts > 0).sum()),
            min_share=float(share.min()),
            score=confident * balance,
        )


def _cache_path(cache_dir: Path, data_config: dict[str, Any], name: str) -> Path:
    key = {k: v for k, v in data_config.items() if k not in _NOT_DATA}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir / f"{name}-{digest[:12]}.pt"


def reference_judge(
    datamodule: TensorDataModule, data_config: dict[str, Any], cache_dir: Path
) -> Judge:
    """The Judge for this dataset: loads the cached classifier, or trains and caches it."""
    shape, classes = datamodule.input_shape, datamodule.num_classes
    model = build_cnn(shape, classes, **_ARCHITECTURE)
    path = _cache_path(cache_dir, data_config, type(datamodule).__name__)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return Judge(model, classes, saved["test_acc"])
    # Its own seeded RNG: training the reference must not shift the random stream of the run
    # that asked for it (runs must not depend on whether the cache existed).
    with torch.random.fork_rng():
        torch.manual_seed(0)
        task = ClassificationTask(
            model, partial(torch.optim.Adam, lr=1e-3), constant_lr, num_classes=classes
        )
        from nnlab.trainer import plain_trainer

        trainer = plain_trainer(
            max_epochs=REFERENCE_EPOCHS,
            enable_checkpointing=False,
            enable_progress_bar=False,
            limit_val_batches=0,
        )
        trainer.fit(task, train_dataloaders=datamodule.train_dataloader())
        (result,) = trainer.test(task, dataloaders=datamodule.test_dataloader(), verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"state_dict": model.state_dict(), "test_acc": result["test/acc"]}, partial_path)
    partial_path.replace(path)  # atomic: a concurrent run never reads half a file
    return Judge(model, classes, result["test/acc"])
