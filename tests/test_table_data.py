"""data=table: the user's own CSV/TSV/Parquet file, encoded from its training split (issue 21)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nnlab.data.table import TableDataModule
from nnlab.errors import Notice, UserError
from tests.helpers import assert_clear_error, metrics_of, only_run

QUICK3 = ["trainer.max_epochs=3", "trainer.enable_progress_bar=false"]
TABLE = ["data=table", "data.path=t.csv"]


def table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Two number columns on different scales, a text and a bool column; `label` is decided by
    x1 and color (separable), `y` is a smooth function of x1 and x2."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(50.0, 10.0, size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(x1 + 2.0 * (color == "red") > 0.5, "yes", "no")
    y = 2.0 * x1 + (x2 - 50.0) / 10.0 + rng.normal(0.0, 0.05, size=n)
    flag = rng.random(n) > 0.5
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "flag": flag, "label": label, "y": y})


def module(path: Path, **settings) -> TableDataModule:
    dm = TableDataModule(path=str(path), **settings)
    dm.setup()
    return dm


def train_block(dm: TableDataModule, split: str = "train") -> torch.Tensor:
    return dm.splits[split][0]


# -- encoding, learned from the training split, and restored ---------------------------------


def test_numbers_standardized_and_text_one_hot_from_the_training_split(tmp_path):
    table().drop(columns="y").to_csv(tmp_path / "t.csv", index=False)
    dm = module(tmp_path / "t.csv", target="label")
    assert dm.kind == "classification" and dm.class_names == ["no", "yes"]
    assert dm.input_shape == (2 + 3 + 2,), "x1, x2, color (3 values), flag (False/True)"
    x = train_block(dm)
    assert torch.allclose(x[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4)
    for block in (x[:, 2:5], x[:, 5:7]):  # exactly one category per row
        assert torch.equal(block.sum(1), torch.ones(len(x)))
    assert dm.fitted["encoding"]["color"] == {"categories": ["blue", "green", "red"]}
    assert dm.fitted["columns"][:2] == [["x1", "numeric"], ["x2", "numeric"]]
    json.dumps(dm.fitted)  # plain JSON: it goes into preprocessing.json
    sizes = {s: len(t[1]) for s, t in dm.splits.items()}
    assert sizes == {"train": 210, "val": 45, "test": 45}


def test_a_restored_module_applies_the_stored_statistics_not_new_ones(tmp_path):
    frame = table().drop(columns="y")
    frame.to_csv(tmp_path / "t.csv", index=False)
    fresh = module(tmp_path / "t.csv", target="label")
    scaled = frame.assign(x1=frame.x1 * 10, x2=frame.x2 * 10)
    scaled.to_csv(tmp_path / "scaled.csv", index=False)
    restored = TableDataModule(path=str(tmp_path / "scaled.csv"), target="label")
    restored.restore(json.loads(json.dumps(fresh.fitted)))  # as read back from the run
    restored.setup()
    assert restored.fitted == fresh.fitted
    stats = fresh.fitted["encoding"]
    mean = torch.tensor([stats["x1"]["mean"], stats["x2"]["mean"]])
    std = torch.tensor([stats["x1"]["std"], stats["x2"]["std"]])
    for split in ("train", "test"):  # the same rows land in the same splits
        before, after = train_block(fresh, split), train_block(restored, split)
        raw_before, raw_after = before[:, :2] * std + mean, after[:, :2] * std + mean
        assert torch.allclose(raw_after, 10 * raw_before, rtol=1e-4, atol=1e-3)
        assert torch.equal(after[:, 2:], before[:, 2:]), "categories encoded alike"
    assert train_block(restored)[:, 1].std() > 5, "kept the stored scale: ×10, not re-standardized"
    again = module(tmp_path / "scaled.csv", target="label")
    assert torch.allclose(train_block(again), train_block(fresh), atol=1e-4), "fresh re-fits"


def test_unseen_category_is_all_zeros_and_mean_fills_from_training(tmp_path):
    frame = table(n=200).drop(columns="y")
    frame.loc[:9, "x1"] = np.nan
    frame.loc[:4, "color"] = np.nan
    frame.to_csv(tmp_path / "t.csv", index=False)
    test = table(n=40, seed=1).drop(columns="y")
    test.loc[0, "color"] = "purple"
    test.to_csv(tmp_path / "test.csv", index=False)
    dm = module(
        tmp_path / "t.csv", target="label", missing="mean", test_path=str(tmp_path / "test.csv")
    )
    categories = dm.fitted["encoding"]["color"]["categories"]
    assert categories == ["blue", "green", "red", "<missing>"]
    colors = dm.splits["test"][0][:, 2:6]
    assert torch.equal(colors[0], torch.zeros(4)), "purple was never seen in training"
    assert torch.equal(colors[1:].sum(1), torch.ones(39))
    assert len(dm.splits["test"][1]) == 40 and sum(len(t[1]) for t in dm.splits.values()) == 240
    assert not any(torch.isnan(t[0]).any() for t in dm.splits.values())


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        (["a", "b", "c"] * 20, "classification"),
        ([True, False] * 30, "classification"),
        ([3, 1, 2] * 20, "classification"),
        (list(range(60)), "regression"),  # more than 20 whole numbers: a count or a measure
        ([0.5, 1.25, 2.0] * 20, "regression"),
        ([1.0, 2.0, None] * 20, "classification"),  # ints with a gap are read as floats
    ],
)
def test_the_task_is_inferred_from_the_target(tmp_path, target, kind):
    pd.DataFrame({"x": np.arange(60.0), "t": target}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.warns(Notice, match="left out 20 of 60") if None in target else nullcontext():
        dm = module(tmp_path / "t.csv", target="t", missing="drop")
    assert dm.kind == kind and dm.fitted["task"] == kind
    if kind == "regression":
        assert dm.num_outputs == 1 and dm.splits["train"][1].dtype == torch.float32


def test_class_names_sort_numbers_as_numbers(tmp_path):
    pd.DataFrame({"x": np.arange(90.0), "t": [10, 2, 1] * 30}).to_csv(tmp_path / "t.csv")
    dm = module(tmp_path / "t.csv", target="t", features=["x"])
    assert dm.class_names == ["1", "2", "10"] and dm.fitted["columns"] == [["x", "numeric"]]
    forced = module(tmp_path / "t.csv", target="t", features=["x"], task="regression")
    assert forced.kind == "regression" and forced.class_names == []


def test_carved_splits_are_stratified_and_fixed_by_split_seed(tmp_path):
    frame = table(n=400).drop(columns="y")
    frame.to_csv(tmp_path / "t.csv", index=False)
    dm = module(tmp_path / "t.csv", target="label")
    share = (frame.label == "yes").mean()
    for _, y in dm.splits.values():
        assert abs(float(y.float().mean()) - share) < 0.02
    other = module(tmp_path / "t.csv", target="label", split_seed=1)
    assert not torch.equal(train_block(dm, "test"), train_block(other, "test"))


def test_categorical_number_column_and_text_column_cap(tmp_path):
    frame = table(n=120).drop(columns="y").assign(zip=[101, 202, 303] * 40)
    frame.assign(user=[f"u{i}" for i in range(120)]).to_csv(tmp_path / "t.csv", index=False)
    dm = module(tmp_path / "t.csv", target="label", categorical=["zip"], features=["x1", "zip"])
    assert dm.fitted["encoding"]["zip"] == {"categories": ["101", "202", "303"]}
    with pytest.raises(UserError, match="'user' has 84 distinct values"):  # 70% of 120
        module(tmp_path / "t.csv", target="label", max_categories=50)


# -- through the CLI ---------------------------------------------------------------------------


def test_classification_on_a_csv_learns_and_evaluates(nnlab, workdir):
    table().drop(columns="y").to_csv(workdir / "t.csv", index=False)
    result = nnlab("train", *TABLE, "data.target=label", "optimizer.lr=0.01", *QUICK3)
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    metrics = metrics_of(run)
    assert metrics["test/acc"] > 0.8, metrics  # the larger class holds about half
    fitted = json.loads((run / "preprocessing.json").read_text())
    assert fitted["task"] == "classification" and fitted["classes"] == ["no", "yes"]
    assert nnlab("eval", "latest").exit_code == 0
    assert json.loads((run / "eval.json").read_text())["test/acc"] == pytest.approx(
        metrics["test/acc"]
    )
    # a new labelled file, encoded with the run's stored statistics and vocabularies
    table(n=80, seed=5).drop(columns="y").to_csv(workdir / "new.csv", index=False)
    assert nnlab("eval", "latest", "data.test_path=new.csv").exit_code == 0
    assert json.loads((run / "eval.json").read_text())["test/acc"] > 0.8


def test_missing_values_are_refused_by_default_naming_each_column(nnlab, workdir):
    frame = table().drop(columns="y")
    frame.loc[:2, "x1"] = np.nan
    frame.loc[5, "color"] = np.nan
    frame.to_csv(workdir / "t.csv", index=False)
    result = nnlab("train", *TABLE, "data.target=label", *QUICK3)
    assert_clear_error(result, ["'x1' in 3 rows", "'color' in 1 row", "data.missing=drop"])
    assert not (workdir / "outputs" / "runs").exists()


@pytest.mark.parametrize("policy", ["mean", "drop"])
def test_missing_values_filled_or_dropped_train(nnlab, workdir, policy):
    frame = table().drop(columns="y")
    frame.loc[:2, "x1"] = np.nan
    frame.loc[5, "color"] = np.nan
    frame.loc[7, "label"] = np.nan  # a row without a target is left out either way
    frame.to_csv(workdir / "t.csv", index=False)
    result = nnlab("train", *TABLE, "data.target=label", f"data.missing={policy}", *QUICK3)
    assert result.exit_code == 0, result.output
    assert "left out" in result.output
    assert np.isfinite(metrics_of(only_run(workdir))["test/loss"])


def test_regression_is_inferred_from_a_float_target(nnlab, workdir):
    table().drop(columns="label").to_csv(workdir / "t.csv", index=False)
    result = nnlab(
        "train",
        *TABLE,
        "data.target=y",
        "trainer.max_epochs=15",
        "trainer.enable_progress_bar=false",
    )
    assert result.exit_code == 0, result.output
    metrics = metrics_of(only_run(workdir))
    assert "test/acc" not in metrics
    # y has a std of about 2.2: predicting its mean scores an MAE of about 1.8
    assert metrics["test/mae"] < 0.3 and metrics["test/loss"] < 0.3, metrics


def test_task_forced_to_regression_on_class_codes(nnlab, workdir):
    frame = table().drop(columns="y")
    frame.assign(label=(frame.label == "yes").astype(int) + 1).to_csv(workdir / "t.csv")
    result = nnlab("train", *TABLE, "data.target=label", "data.task=regression", *QUICK3)
    assert result.exit_code == 0, result.output
    assert "test/mae" in metrics_of(only_run(workdir))


def test_parquet_file(nnlab, workdir):
    table().drop(columns="y").to_parquet(workdir / "t.parquet")
    result = nnlab("train", "data=table", "data.path=t.parquet", "data.target=label", *QUICK3)
    assert result.exit_code == 0, result.output
    assert metrics_of(only_run(workdir))["test/acc"] > 0.6


def test_val_and_test_files_replace_the_carved_splits(nnlab, workdir):
    table(n=200).drop(columns="y").to_csv(workdir / "train.tsv", sep="\t", index=False)
    table(n=50, seed=1).drop(columns="y").to_csv(workdir / "val.tsv", sep="\t", index=False)
    table(n=60, seed=2).drop(columns="y").to_csv(workdir / "test.csv", index=False)
    files = ["data.path=train.tsv", "data.val_path=val.tsv", "data.test_path=test.csv"]
    result = nnlab("train", "data=table", *files, "data.target=label", *QUICK3)
    assert result.exit_code == 0, result.output
    dm = module(workdir / "train.tsv", target="label", val_path="val.tsv", test_path="test.csv")
    assert {s: len(t[1]) for s, t in dm.splits.items()} == {"train": 200, "val": 50, "test": 60}


def _write_errors(workdir: Path) -> None:
    frame = table(n=60).drop(columns="y")
    frame.to_csv(workdir / "t.csv", index=False)
    frame.assign(label="x").to_csv(workdir / "one.csv", index=False)
    frame[["label"]].to_csv(workdir / "only.csv", index=False)
    frame.assign(user=[f"user{i:03d}" for i in range(60)]).to_csv(workdir / "ids.csv", index=False)
    (workdir / "junk.csv").write_bytes(bytes(range(256)) * 8)
    (workdir / "fake.parquet").write_text("a,b\n1,2\n")
    (workdir / "t.xlsx").write_text("a,b\n1,2\n")
    frame.assign(label="z").head(5).to_csv(workdir / "val.csv", index=False)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.target=lable"], ["'lable'", "no such column", "Did you mean 'label'?"]),
        (["data.target=label", "data.features=[x1,colour]"], ["'colour'", "'color'"]),
        (["data.target=label", "data.features=[x1,label]"], ["lists the target column"]),
        (["data.target=label", "data.path=nope.csv"], ["nope.csv does not exist"]),
        (["data.target=label", "data.path=t.xlsx"], [".csv, .tsv, .tab, .parquet, .pq"]),
        (["data.target=label", "data.path=junk.csv"], ["Cannot read", "as a CSV table"]),
        (["data.target=label", "data.path=fake.parquet"], ["as a Parquet table"]),
        (["data.target=label", "data.path=one.csv"], ["holds one value only ('x')"]),
        (["data.target=label", "data.path=only.csv"], ["No feature columns are left"]),
        (
            ["data.target=label", "data.path=ids.csv", "data.max_categories=20"],
            ["'user' has 42 distinct values", "data.features=[x1,x2,color,flag]"],
        ),
        (["data.target=label", "data.task=regression"], ["predicts numbers", "'label'"]),
        (["data.target=label", "data.val_path=val.csv"], ["classes the training", "z"]),
        (["data.target=label", "data.missing=median"], ["data.missing", "drop, error, mean"]),
    ],
)
def test_bad_tables_and_settings_are_clear_errors(nnlab, workdir, overrides, expected):
    _write_errors(workdir)
    assert_clear_error(nnlab("train", *TABLE, *overrides, *QUICK3), expected)
    assert not (workdir / "outputs" / "runs").exists()
