"""`nnlab predict` on table, arrays and image-folder runs: predictions.csv, the inputs scaled
by what the run's data learned in training (preprocessing.json), not by the new files."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from tests.datasets_on_disk import write_image_folder
from tests.helpers import QUICK, assert_clear_error, only_run
from tests.test_table_data import table

TABLE = ["data=table", "data.path=t.csv", "data.target=label", "optimizer.lr=0.01"]


def _predictions(run) -> pd.DataFrame:
    return pd.read_csv(run / "predictions" / "predictions.csv", keep_default_na=False)


def test_a_table_run_predicts_new_rows_with_its_stored_encoding(nnlab, workdir):
    table().drop(columns="y").to_csv(workdir / "t.csv", index=False)
    assert nnlab("train", *TABLE, "trainer.max_epochs=3", *QUICK[1:]).exit_code == 0
    run = only_run(workdir)
    new = table(n=60, seed=7).drop(columns="y")
    new.drop(columns="label").to_csv(workdir / "new.csv", index=False)  # no target column
    result = nnlab("predict", "latest", "new.csv")
    assert result.exit_code == 0, result.output
    found = _predictions(run)
    assert list(found.columns) == ["input", "item", "prediction", "p_no", "p_yes"]
    assert found["item"].tolist() == list(range(60))
    assert np.allclose(found[["p_no", "p_yes"]].sum(axis=1), 1.0, atol=1e-5)
    assert (found["prediction"] == new["label"]).mean() > 0.8
    # The training file changes after training: predict still encodes by the stored numbers.
    scaled = table().drop(columns="y")
    scaled[["x1", "x2"]] *= 10.0
    scaled.to_csv(workdir / "t.csv", index=False)
    assert nnlab("predict", "latest", "new.csv").exit_code == 0
    again = _predictions(run)
    assert np.allclose(again[["p_no", "p_yes"]], found[["p_no", "p_yes"]], atol=1e-6)


def test_new_rows_on_another_scale_are_not_rescaled_to_fit(nnlab, workdir):
    """Statistics learned from the inputs themselves would hide a unit change (metres given as
    centimetres); the stored ones keep it visible in the predictions."""
    table().drop(columns="y").to_csv(workdir / "t.csv", index=False)
    assert nnlab("train", *TABLE, "trainer.max_epochs=3", *QUICK[1:]).exit_code == 0
    rows = table(n=60, seed=7).drop(columns=["y", "label"])
    rows.to_csv(workdir / "new.csv", index=False)
    rows.assign(x1=rows["x1"] * 100.0).to_csv(workdir / "new_cm.csv", index=False)
    assert nnlab("predict", "latest", "new.csv", "new_cm.csv").exit_code == 0
    found = _predictions(only_run(workdir))
    plain, scaled = found[found["input"] == "new.csv"], found[found["input"] == "new_cm.csv"]
    assert len(plain) == len(scaled) == 60
    assert not np.allclose(plain["p_yes"].to_numpy(), scaled["p_yes"].to_numpy(), atol=1e-3)


def test_a_table_with_missing_inputs_is_refused_naming_the_column(nnlab, workdir):
    table().drop(columns="y").to_csv(workdir / "t.csv", index=False)
    assert nnlab("train", *TABLE, *QUICK).exit_code == 0
    rows = table(n=10, seed=3).drop(columns=["y", "label"])
    rows.loc[2, "x2"] = np.nan
    rows.to_csv(workdir / "gaps.csv", index=False)
    result = nnlab("predict", "latest", "gaps.csv")
    assert_clear_error(result, ["gaps.csv has missing values", "'x2' in 1 row", "data.missing"])
    assert not (only_run(workdir) / "predictions").exists()


def test_an_arrays_run_predicts_the_samples_of_an_npz(nnlab, workdir):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    np.savez(workdir / "data.npz", x=x, y=y)
    assert nnlab("train", "data=arrays", "data.path=data.npz", *QUICK).exit_code == 0
    fresh = rng.normal(size=(50, 6)).astype(np.float32)
    np.savez(workdir / "new.npz", x=fresh)
    result = nnlab("predict", "latest", "new.npz")
    assert result.exit_code == 0, result.output
    found = _predictions(only_run(workdir))
    assert found["item"].tolist() == list(range(50))
    truth = (fresh[:, 0] + fresh[:, 1] > 0).astype(int)
    assert (found["prediction"].astype(int).to_numpy() == truth).mean() > 0.7
    np.save(workdir / "wrong.npy", fresh[:, :4])
    assert_clear_error(nnlab("predict", "latest", "wrong.npy"), ["wrong.npy", "(4,)"])


def test_a_regression_run_predicts_values(nnlab, workdir):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    np.savez(workdir / "data.npz", x=x, y=(x @ [1.0, -2.0, 0.5]).astype(np.float32))
    args = ["data=arrays", "data.path=data.npz", "trainer.max_epochs=20", *QUICK[1:]]
    assert nnlab("train", *args).exit_code == 0
    np.save(workdir / "new.npy", x[:20])
    assert nnlab("predict", "latest", "new.npy").exit_code == 0
    found = _predictions(only_run(workdir))
    assert list(found.columns) == ["input", "item", "prediction"]
    error = np.abs(found["prediction"].to_numpy() - x[:20] @ [1.0, -2.0, 0.5])
    assert error.mean() < 0.5, error


def test_an_image_folder_run_predicts_image_files(nnlab, workdir):
    write_image_folder(workdir / "imgs", per_class=16)
    args = ["data=image_folder", "data.root=imgs", "data.image_size=8", "model=cnn"]
    assert nnlab("train", *args, "trainer.max_epochs=3", *QUICK[1:]).exit_code == 0
    write_image_folder(workdir / "new", per_class=2, seed=9)
    files = sorted(str(p) for p in (workdir / "new").rglob("*.png"))
    result = nnlab("predict", "latest", *files)
    assert result.exit_code == 0, result.output
    found = _predictions(only_run(workdir))
    assert sorted(found["input"]) == files
    truth = [path.split("/")[-2] for path in found["input"]]
    assert (found["prediction"] == truth).mean() >= 0.5
    assert {"p_cat", "p_dog", "p_frog"} <= set(found.columns)


def test_a_gan_run_draws_new_samples_fixed_by_the_seed(nnlab, workdir):
    gan = ["model=gan", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "logger=none"]
    assert nnlab("train", *gan, *QUICK[1:]).exit_code == 0
    out = only_run(workdir) / "predictions"
    drawn = []
    for seed in ("3", "3", "4"):
        result = nnlab("predict", "latest", "--samples", "10", "--seed", seed)
        assert result.exit_code == 0, result.output
        with np.load(out / "samples.npz") as found:
            drawn.append(found["x"])
    assert drawn[0].shape == (10, 1, 8, 8) and drawn[0].dtype == np.uint8
    assert np.array_equal(drawn[0], drawn[1]), "the same seed draws the same images"
    assert not np.array_equal(drawn[0], drawn[2])
    with Image.open(out / "samples.png") as grid:
        assert grid.size[0] >= 8 * 32  # eight tiles a row, each scaled up to 32 pixels


def test_predict_without_inputs_says_what_to_give(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    assert_clear_error(nnlab("predict", "latest"), ["Give the inputs to predict on"])
