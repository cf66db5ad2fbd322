"""GAN: training, judging samples with the cached reference classifier, eval (issue 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nnlab.models.gan import build_gan
from tests.helpers import QUICK, assert_clear_error, metrics_of

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One outputs/ for the module, so the reference classifier is trained once and reused."""
    return tmp_path_factory.mktemp("gan")


def run_dir(shared: Path, name: str) -> Path:
    (found,) = (shared / "outputs" / "runs").glob(f"*_{name}")
    return found


def train_gan(nnlab, shared: Path, name: str, *extra: str) -> dict:
    result = nnlab("train", "model=gan", f"name={name}", *QUICK, *extra)
    assert result.exit_code == 0, result.output
    return metrics_of(run_dir(shared, name))


@pytest.fixture
def in_shared(shared: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(shared)
    return shared


def test_gan_trains_judges_samples_and_writes_a_grid(nnlab, in_shared):
    metrics = train_gan(nnlab, in_shared, "mlp_gan")
    assert metrics["status"] == "finished"
    assert math.isfinite(metrics["train/loss_g"]) and math.isfinite(metrics["train/loss_d"])
    for stage in ("val", "test"):
        assert 0.0 <= metrics[f"{stage}/sample_score"] <= 1.0
        assert 0.0 <= metrics[f"{stage}/sample_confident"] <= 1.0
    run = run_dir(in_shared, "mlp_gan")
    assert (run / "samples.png").read_bytes().startswith(PNG)
    assert (run / "checkpoints" / "best.ckpt").exists()
    assert list((in_shared / "outputs" / "reference").glob("DigitsDataModule-*.pt"))
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("samples")) == 2, "one sample grid per epoch"
    assert {"train/loss_g", "train/loss_d", "val/sample_score"} <= set(events.Tags()["scalars"])


def test_reference_classifier_is_cached_and_runs_do_not_depend_on_the_cache(nnlab, in_shared):
    train_gan(nnlab, in_shared, "first")  # the cache exists by now (or is made here)
    (cached,) = (in_shared / "outputs" / "reference").glob("*.pt")
    first = metrics_of(run_dir(in_shared, "first"))
    cached.unlink()  # the next run trains the reference again: the GAN's results must not move
    second = train_gan(nnlab, in_shared, "second")
    assert second["test/sample_score"] == first["test/sample_score"]
    assert second["train/loss_g"] == first["train/loss_g"]
    (again,) = (in_shared / "outputs" / "reference").glob("*.pt")
    again_stamp = again.stat().st_mtime_ns
    third = train_gan(nnlab, in_shared, "third")
    assert again.stat().st_mtime_ns == again_stamp, "the third run loaded the cached classifier"
    assert third["test/sample_score"] == first["test/sample_score"]


def test_eval_on_a_gan_run_reports_the_sample_score_and_writes_the_grid(nnlab, in_shared):
    train_gan(nnlab, in_shared, "to_eval")
    run = run_dir(in_shared, "to_eval")
    (run / "samples.png").unlink()
    result = nnlab("eval", str(run))
    assert result.exit_code == 0, result.output
    assert "test/sample_score" in result.output
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["test/sample_score"] == pytest.approx(metrics_of(run)["test/sample_score"])
    assert (run / "samples.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    "extra",
    [
        ["model.arch=dcgan", "model.channels=16"],
        ["model.objective=minimax", "norm=none", "model.label_smoothing=0"],
        ["optimizer=rmsprop", "model.lr_g=null", "scheduler=cosine", "norm=layer"],
    ],
)
def test_gan_variants_train(nnlab, in_shared, extra):
    name = "variant_" + "_".join(e.split("=")[1] for e in extra[:1]).replace(".", "")
    metrics = train_gan(nnlab, in_shared, name, *extra)
    assert math.isfinite(metrics["train/loss_g"]) and metrics["status"] == "finished"


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_gan_is_sized_for_the_image_shape(arch, shape):
    gan = build_gan(shape, 10, arch=arch, channels=8, hidden=16)
    images = gan(gan.noise(4))
    assert images.shape == (4, *shape) and images.abs().max() <= 1
    assert gan.discriminator(images).shape == (4, 1)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=gan", "data=iris"], ["needs an image dataset", "data=digits"]),
        (["model=gan", "model.arch=dcgn"], ["'dcgn'", "Did you mean 'dcgan'"]),
        (["model=gan", "model.objective=minmax"], ["'minmax'", "minimax"]),
        (["model=gan", "trainer.gradient_clip_val=1.0"], ["gradient_clip_val", "model=gan"]),
    ],
)
def test_gan_input_errors(nnlab, workdir, overrides, expected):
    assert_clear_error(nnlab("train", *QUICK, *overrides), expected)


@pytest.mark.slow
def test_gan_samples_are_recognizable_and_cover_every_digit(nnlab, workdir):
    result = nnlab("train", "model=gan", "trainer.enable_progress_bar=false")
    assert result.exit_code == 0, result.output
    (run,) = (workdir / "outputs" / "runs").iterdir()
    metrics = metrics_of(run)
    assert metrics["fit_time_s"] <= 300
    assert metrics["test/sample_confident"] >= 0.85, metrics
    assert metrics["test/sample_classes"] == 10, metrics
    assert metrics["test/sample_min_share"] >= 0.04, metrics


def test_judge_scores_real_digits_high_and_a_single_class_low(in_shared):
    from nnlab.build import build
    from nnlab.config import compose_config

    cfg, _ = compose_config(["model=gan"])
    datamodule, task = build(cfg)  # the same cached reference the GAN runs use
    x, y = datamodule.splits["test"]
    real = task.judge(x)
    assert real.confident > 0.9 and real.classes == 10 and real.score > 0.85
    ones = task.judge(x[y == 1])
    assert ones.classes <= 2 and ones.score < 0.2
