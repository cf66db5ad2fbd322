"""Training from on-disk formats through the CLI, on tiny files the tests write."""

from __future__ import annotations

from tests.datasets_on_disk import write_image_folder, write_mnist
from tests.helpers import metrics_of, only_run

ONE_EPOCH = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def test_train_cnn_on_mnist_root(nnlab, workdir):
    write_mnist(workdir / "data", n_train=200, n_test=50)
    result = nnlab("train", "data=mnist", "model=cnn", "model.channels=[8,16]", *ONE_EPOCH)
    assert result.exit_code == 0, result.output
    metrics = metrics_of(only_run(workdir))
    assert metrics["status"] == "finished"
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_train_on_image_folder_and_eval(nnlab, workdir):
    write_image_folder(workdir / "imgs", per_class=20)
    args = ["data=image_folder", "data.root=imgs", "data.image_size=8", "model=cnn"]
    result = nnlab("train", *args, "model.channels=[8]", *ONE_EPOCH)
    assert result.exit_code == 0, result.output
    assert nnlab("eval", "latest").exit_code == 0
