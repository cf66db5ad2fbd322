"""data=arrays: the user's own NumPy arrays, and the 1-D CNN and RNN on signals (issue 21)."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
import torch

from nnlab.data.array_files import read_npy, read_npz
from nnlab.data.arrays import ArraysDataModule, Samples
from nnlab.errors import UserError
from nnlab.models.layers import make_norm
from tests.helpers import QUICK, assert_clear_error, metrics_of, only_run


def _weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _features(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable features: the class is the sign of a sum of two of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _signals(n: int = 240, channels: int | None = 2, length: int = 32, seed: int = 0):
    """Noise with a class-specific burst at a random place in the first channel."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, channels or 1, length)).astype(np.float32)
    y = rng.integers(0, 3, n)
    for i in range(n):
        start = rng.integers(0, length - 8)
        x[i, 0, start : start + 8] += 3 * np.sin(np.arange(8) * (y[i] + 1))
    return (x if channels else x[:, 0]), y


def _arrays(*extra: str, path: str = "data.npz") -> list[str]:
    return ["data=arrays", f"data.path={path}", *extra, *QUICK]


def test_npz_with_x_and_y_trains_and_evaluates(nnlab, workdir):
    x, y = _features()
    np.savez(workdir / "data.npz", x=x, y=y)
    result = nnlab("train", *_arrays())
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    assert metrics_of(run)["test/acc"] > 0.7, "two epochs learn a linear rule well above 50%"
    saved = json.loads((run / "preprocessing.json").read_text())
    assert saved["layout"]["kind"] == "features" and saved["classes"] == [0, 1]
    assert np.asarray(saved["standardize"]["mean"]).shape == (1, 1, 12), "one per feature"
    assert nnlab("eval", "latest").exit_code == 0


def test_official_splits_replace_the_carved_ones(workdir):
    x, y = _features(200)
    np.savez(
        workdir / "split.npz", x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:]
    )
    dm = ArraysDataModule(path=str(workdir / "split.npz"))
    dm.setup()
    sizes = {name: len(split[1]) for name, split in dm.splits.items()}
    assert sizes == {"train": 102, "val": 18, "test": 80}, "val carved from x_train only"
    assert torch.equal(dm.splits["test"][1], torch.as_tensor(y[120:])), "x_test in its order"
    np.savez(
        workdir / "three.npz",
        **{"x_train": x[:100], "y_train": y[:100], "x_val": x[100:130], "y_val": y[100:130]},
        **{"x_test": x[130:], "y_test": y[130:]},
    )
    dm = ArraysDataModule(path=str(workdir / "three.npz"))
    dm.setup()
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [100, 30, 70]


def test_a_pair_of_npy_files_with_float_labels_is_regression(nnlab, workdir):
    x, _ = _features()
    np.save(workdir / "x.npy", x)
    np.save(workdir / "y.npy", (x[:, :2] @ [1.0, -2.0]).astype(np.float64))
    result = nnlab("train", *_arrays("data.labels=y.npy", path="x.npy"))
    assert result.exit_code == 0, result.output
    metrics = metrics_of(only_run(workdir))
    assert {"test/loss", "test/mae"} <= set(metrics) and "test/acc" not in metrics


@pytest.mark.parametrize("channels", [None, 3], ids=["N-L", "N-C-L"])
def test_signals_train_a_1d_cnn(nnlab, workdir, channels):
    x, y = _signals(channels=channels)
    np.savez(workdir / "data.npz", x=x, y=y)
    extra = ("model=cnn", "model.channels=[8,16]", "model.fc_hidden=16")
    if channels is None:
        extra += ("data.layout=signal",)  # auto reads (N, L) as features: a 1-channel signal too
    result = nnlab("train", *_arrays(*extra))
    assert result.exit_code == 0, result.output
    conv = _weights(only_run(workdir))["model.0.0.weight"]
    assert conv.shape == (8, channels or 1, 3), "a Conv1d over the signal's channels"


def test_signals_train_an_rnn_reading_length_steps_of_channels(nnlab, workdir):
    x, y = _signals(channels=3, length=16)
    np.savez(workdir / "data.npz", x=x, y=y)
    result = nnlab("train", *_arrays("model=rnn", "model.hidden=16", "model.layers=1"))
    assert result.exit_code == 0, result.output
    assert _weights(only_run(workdir))["model.layers.0.weight_ih_l0"].shape == (64, 3)


def test_uint8_images_are_scaled_and_train_a_2d_cnn(nnlab, workdir):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 200, size=(200, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 2, 200)
    x[y == 1, :4] = 255  # bright top half: class 1
    np.savez_compressed(workdir / "data.npz", x=x, y=y)
    result = nnlab("train", *_arrays("model=cnn", "model.channels=[8]"))
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    assert _weights(run)["model.0.0.weight"].shape == (8, 1, 3, 3)
    layout = json.loads((run / "preprocessing.json").read_text())["layout"]
    assert layout == {"kind": "image", "shape": [1, 8, 8], "channels_last": False, "scale": 255}
    assert metrics_of(run)["test/acc"] > 0.9


def test_channels_last_images_and_text_labels(workdir):
    x = np.random.default_rng(0).integers(0, 255, size=(60, 6, 5, 3), dtype=np.uint8)
    y = np.array(["cat", "dog", "emu"] * 20)
    np.savez(workdir / "rgb.npz", x=x, y=y)
    dm = ArraysDataModule(path=str(workdir / "rgb.npz"))
    dm.setup()
    assert dm.input_shape == (3, 6, 5) and dm.class_names == ["cat", "dog", "emu"]
    samples = Samples(dm.fitted["layout"]).unscaled(x[:2])
    assert np.array_equal(samples, x[:2].transpose(0, 3, 1, 2).astype(np.float32) / 255)


def test_norms_for_signals():
    assert isinstance(make_norm("batch", (4, 10)), torch.nn.BatchNorm1d)
    assert isinstance(make_norm("instance", (4, 10)), torch.nn.InstanceNorm1d)
    assert isinstance(make_norm("group", (4, 10), groups=2), torch.nn.GroupNorm)
    assert make_norm("layer", (4, 10))(torch.randn(2, 4, 10)).shape == (2, 4, 10)


@pytest.mark.parametrize(
    ("arrays", "overrides", "expected"),
    [
        ({"x": "signal", "y": "labels"}, ["model=gan"], ["model=gan", "shape (2, 32)"]),
        ({"x": "image", "y": "labels"}, ["model=rnn"], ["model=rnn needs", "(1, 8, 8)"]),
        (
            {"x": "signal", "y": "labels"},
            ["model=cnn", "model.channels=[4,4,4,4,4,4]"],
            ["only 32 long", "at most 5 stages"],
        ),
        (
            {"x": "image4", "y": "labels"},
            ["data.layout=signal"],
            ["shape (3, 8, 8, 2)", "data.layout=signal cannot read"],
        ),
        ({"inputs": "signal", "y": "labels"}, [], ["holds the arrays inputs, y", "x_train"]),
        ({"x": "signal", "y": "short"}, [], ["holds 100 samples", "holds 99 labels"]),
        ({"x": "text", "y": "labels"}, [], ["[x] has dtype <U1", "numbers"]),
        ({"x": "signal", "y": "objects"}, [], ["[y] holds Python objects", "never unpickles"]),
        ({"x": "signal", "y": "one"}, [], ["one class (0)", "data.task=regression"]),
        ({"x": "signal", "y": "text"}, ["data.task=regression"], ["text labels"]),
        ({"x": "nan", "y": "labels"}, [], ["holds NaN or infinite values"]),
    ],
)
def test_bad_arrays_and_models_are_clear_errors(nnlab, workdir, arrays, overrides, expected):
    rng = np.random.default_rng(0)
    made = {
        "signal": rng.normal(size=(100, 2, 32)).astype(np.float32),
        "image": rng.integers(0, 255, size=(100, 8, 8), dtype=np.uint8),
        "image4": np.zeros((100, 3, 8, 8, 2), np.float32),
        "labels": np.arange(100) % 2,
        "short": np.arange(99) % 2,
        "text": np.array(list("ab") * 50),
        "objects": np.array([1, "a"] * 50, dtype=object),
        "one": np.zeros(100, np.int64),
        "nan": np.where(np.arange(100)[:, None, None] == 7, np.nan, np.ones((100, 2, 32))),
    }
    np.savez(workdir / "data.npz", **{key: made[kind] for key, kind in arrays.items()})
    assert_clear_error(nnlab("train", *_arrays(*overrides)), expected)


def test_file_errors_name_the_file(nnlab, workdir):
    assert_clear_error(nnlab("train", *_arrays(path="none.npz")), ["none.npz is not a file"])
    np.save(workdir / "x.npy", np.zeros((10, 3)))
    assert_clear_error(nnlab("train", *_arrays(path="x.npy")), ["data.labels=y.npy"])
    (workdir / "bad.npz").write_text("not a zip")
    assert_clear_error(nnlab("train", *_arrays(path="bad.npz")), ["bad.npz is not a .npz"])
    np.save(workdir / "obj.npy", np.array([None] * 10), allow_pickle=True)
    result = nnlab("train", *_arrays("data.labels=obj.npy", path="x.npy"))
    assert_clear_error(result, ["obj.npy holds Python objects"])


def test_streamed_batches_match_the_in_memory_ones(nnlab, workdir):
    """Same seed, same batches: streamed from the file through two workers, several batches
    per step and a batch limit, the run's metrics equal the in-memory run's to the last bit."""
    x, y = _signals(n=300)
    np.savez(workdir / "data.npz", x=x, y=y)
    common = ("model=cnn", "model.channels=[8]", "trainer.steps_per_execution=3")
    common += ("trainer.limit_train_batches=3", "data.batch_size=32")
    assert nnlab("train", *_arrays(*common, "data.in_memory=true")).exit_code == 0
    result = nnlab("train", *_arrays(*common, "data.in_memory=false", "data.workers=2"))
    assert result.exit_code == 0, result.output
    first, second = (metrics_of(run) for run in sorted((workdir / "outputs/runs").iterdir()))
    for key in ("train/loss", "val/loss", "test/loss", "test/acc"):
        assert first[key] == second[key], key
    assert not multiprocessing.active_children(), "the workers stop with the run"


def test_streaming_plan_is_the_in_memory_order(workdir):
    x, y = _signals(n=150)
    np.savez(workdir / "data.npz", x=x, y=y)
    loaders = []
    for in_memory in (True, False):
        dm = ArraysDataModule(path=str(workdir / "data.npz"), in_memory=in_memory, batch_size=16)
        dm.setup()
        loaders.append(dm.train_dataloader())
    for _ in range(2):  # two passes: two epochs' shuffles
        for memory, streamed in zip(*loaders, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(memory, streamed, strict=True))


def test_large_data_streams_from_a_memory_map(workdir):
    x, y = _signals(n=2000, length=128)  # 2 MiB of float32
    np.save(workdir / "x.npy", x)
    np.save(workdir / "y.npy", y)
    np.savez(workdir / "xy.npz", x=x, y=y)
    assert isinstance(read_npy(workdir / "x.npy"), np.memmap)
    assert isinstance(read_npz(workdir / "xy.npz", "x"), np.memmap), "np.savez is stored as is"
    path = str(workdir / "x.npy")
    small = ArraysDataModule(path=path, labels=str(workdir / "y.npy"))
    small.setup()
    assert not small.streaming and small.splits
    dm = ArraysDataModule(path=path, labels=str(workdir / "y.npy"), memory_limit_mb=1)
    dm.setup()
    assert dm.streaming and not dm.splits and dm.input_shape == (2, 128)
    x_batch, _ = next(iter(dm.val_dataloader()))
    assert x_batch.shape == (64, 2, 128) and x_batch.dtype == torch.float32


def test_a_restored_datamodule_applies_the_stored_statistics_and_classes(workdir):
    x, y = _features(200)
    np.savez(workdir / "a.npz", x=x, y=y + 5)
    first = ArraysDataModule(path=str(workdir / "a.npz"))
    first.setup()
    keep = y == 1  # the new file holds only the second class, and inputs 10 times as large
    np.savez(workdir / "b.npz", x=x[keep] * 10, y=y[keep] + 5)
    second = ArraysDataModule(path=str(workdir / "b.npz"), val_fraction=0.3, test_fraction=0.3)
    second.restore(json.loads(json.dumps(first.fitted)))  # as preprocessing.json gives it
    with pytest.raises(UserError, match="one class"):  # learned afresh, it would be refused
        ArraysDataModule(path=str(workdir / "b.npz")).setup()
    second.setup()
    assert second.class_names == ["5", "6"] and set(second.splits["train"][1].tolist()) == {1}
    scale = second.splits["train"][0].std(dim=(0, 1))
    assert torch.all(scale > 5), "scaled by the stored std, not re-standardized to 1"


def test_eval_refuses_arrays_shaped_unlike_the_training_ones(nnlab, workdir):
    x, y = _signals(n=120)
    np.savez(workdir / "data.npz", x=x, y=y)
    assert nnlab("train", *_arrays("model=cnn", "model.channels=[4]")).exit_code == 0
    np.savez(workdir / "data.npz", x=np.concatenate([x, x[:, :1]], axis=1), y=y)
    result = nnlab("eval", "latest")
    assert_clear_error(result, ["shape (3, 32)", "training samples are (2, 32)"])
