"""In-memory datamodules: stratified, seed-fixed splits; slicing batches; no test leakage."""

from __future__ import annotations

import numpy as np
import torch

from nnlab.data.base import TensorBatches
from nnlab.data.digits import DigitsDataModule
from nnlab.data.tabular import TabularDataModule


def test_digits_splits_are_stratified_disjoint_and_fixed_by_split_seed():
    dm = DigitsDataModule(split_seed=0)
    dm.setup()
    sizes = {k: len(v[1]) for k, v in dm.splits.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] - 0.15 * 1797) < 2 and abs(sizes["val"] - 0.15 * 1797) < 2
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)
    counts = torch.bincount(dm.splits["test"][1], minlength=10)
    assert counts.min() >= 25, "every digit is in the test split in proportion"
    again = DigitsDataModule(split_seed=0, seed=99)
    again.setup()
    assert torch.equal(dm.splits["test"][0], again.splits["test"][0]), "train seed does not move it"
    other = DigitsDataModule(split_seed=1)
    other.setup()
    assert not torch.equal(dm.splits["test"][0], other.splits["test"][0])


def test_standardized_with_training_statistics_only():
    dm = DigitsDataModule()
    dm.setup()
    x_train = dm.splits["train"][0]
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-3


def test_tabular_sets_load():
    for name, classes, features in (("iris", 3, 4), ("wine", 3, 13), ("breast_cancer", 2, 30)):
        dm = TabularDataModule(dataset=name)
        dm.setup()
        assert dm.num_classes == classes and dm.input_shape == (features,)


def test_batches_cover_every_sample_once_and_reshuffle_per_epoch():
    x = torch.arange(10).float()
    batches = TensorBatches((x, x.long()), batch_size=4, shuffle=True, seed=3)
    assert len(batches) == 3
    first = torch.cat([b[0] for b in batches])
    second = torch.cat([b[0] for b in batches])
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    replay = TensorBatches((x, x.long()), batch_size=4, shuffle=True, seed=3)
    assert torch.equal(torch.cat([b[0] for b in replay]), first), "order depends on seed only"
    assert np.array_equal([len(b[0]) for b in batches], [4, 4, 2])


def test_batches_grouped_per_step_and_limited_by_count_or_fraction():
    x = torch.arange(50).float()
    plain = [b[0] for b in TensorBatches((x, x.long()), batch_size=4)]  # 13 batches, 2 at the end
    grouped = TensorBatches((x, x.long()), batch_size=4, per_step=5)
    assert len(grouped) == 3 and grouped.steps == 13
    groups = list(grouped)
    assert [len(g) for g in groups] == [5, 5, 3]
    flat = [b[0] for g in groups for b in g]
    assert all(torch.equal(a, b) for a, b in zip(flat, plain, strict=True)), "same batches"
    limited = TensorBatches((x, x.long()), batch_size=4, per_step=5, limit=7)
    assert limited.steps == 7 and [len(g) for g in limited] == [5, 2]
    assert all(len(b[0]) == 4 for g in limited for b in g), "a limit cuts whole batches"
    assert TensorBatches((x, x.long()), batch_size=4, limit=0.5).steps == 6
    assert TensorBatches((x, x.long()), batch_size=4, limit=0.01).steps == 1, "at least one"
    for none in (0, 0.0):  # trainer.limit_val_batches=0: no validation
        assert len(TensorBatches((x, x.long()), batch_size=4, per_step=5, limit=none)) == 0


def test_dataloader_shuffle_follows_the_trainer_epoch():
    from types import SimpleNamespace

    from nnlab.data.base import EpochShuffle

    trainer = SimpleNamespace(current_epoch=0)
    sampler = EpochShuffle(20, seed=5, trainer=trainer)
    first, again = list(sampler), list(sampler)
    assert sorted(first) == list(range(20)) and first == again, "same epoch, same order"
    trainer.current_epoch = 3
    third = list(sampler)
    assert third != first
    # A fresh sampler (a resumed run) at epoch 3 shuffles as the long-running one did.
    assert list(EpochShuffle(20, seed=5, trainer=SimpleNamespace(current_epoch=3))) == third
