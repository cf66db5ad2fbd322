"""On-disk image datasets: torchvision layouts and ImageFolder, built tiny in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.datasets import FashionMNIST

from nnlab.data.vision import ImageFolderDataModule, TorchvisionDataModule
from nnlab.errors import UserError
from tests.datasets_on_disk import (
    CIFAR_NAMES,
    write_cifar10,
    write_image_folder,
    write_mnist,
)


def loaded(dm):
    dm.setup("fit")
    return dm


def counts(y: torch.Tensor, classes: int = 10) -> list[int]:
    return torch.bincount(y, minlength=classes).tolist()


@pytest.mark.parametrize(
    ("dataset", "folder", "names"),
    [
        ("mnist", "MNIST", [str(i) for i in range(10)]),
        ("fashion_mnist", "FashionMNIST", list(FashionMNIST.classes)),
    ],
)
def test_mnist_layouts_load(tmp_path: Path, dataset: str, folder: str, names: list[str]) -> None:
    write_mnist(tmp_path, folder=folder, n_train=100, n_test=30)
    dm = loaded(TorchvisionDataModule(dataset, str(tmp_path), batch_size=16, val_fraction=0.2))
    assert dm.input_shape == (1, 28, 28)
    assert dm.num_classes == 10
    assert dm.class_names == names
    x_train, y_train = dm.splits["train"]
    x_val, y_val = dm.splits["val"]
    assert len(dm.splits["test"][0]) == 30
    assert len(x_train) == 80 and len(x_val) == 20
    assert counts(y_val) == [2] * 10  # stratified: 10 of each class in train → 2 in val
    assert x_train.dtype == torch.float32
    assert abs(x_train.mean().item()) < 1e-4
    assert x_train.std().item() == pytest.approx(1.0, abs=1e-3)


def test_mnist_reads_gzipped_files(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    dm = loaded(TorchvisionDataModule("mnist", str(tmp_path), val_fraction=0.25))
    assert dm.input_shape == (1, 28, 28)
    assert len(dm.splits["test"][0]) == 20


def test_same_split_seed_same_split(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    a = loaded(TorchvisionDataModule("mnist", str(tmp_path), val_fraction=0.25))
    b = loaded(TorchvisionDataModule("mnist", str(tmp_path), val_fraction=0.25))
    assert torch.equal(a.splits["val"][0], b.splits["val"][0])


def test_cifar10_loads_with_names_from_meta(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_train_per_batch=20, n_test=20)
    dm = loaded(TorchvisionDataModule("cifar10", str(tmp_path), batch_size=8, val_fraction=0.1))
    assert dm.input_shape == (3, 32, 32)
    assert dm.class_names == CIFAR_NAMES
    assert len(dm.splits["train"][0]) == 90 and len(dm.splits["val"][0]) == 10
    assert len(dm.splits["test"][0]) == 20
    channel_means = dm.splits["train"][0].mean(dim=(0, 2, 3))
    assert torch.allclose(channel_means, torch.zeros(3), atol=1e-4)


def test_train_dataloader_batch_size(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=100)
    dm = loaded(TorchvisionDataModule("mnist", str(tmp_path), batch_size=16, val_fraction=0.2))
    sizes = [len(x) for x, _ in dm.train_dataloader()]
    assert sizes == [16] * 5
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and y.dtype == torch.int64


def test_missing_root_names_path_and_files(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    dm = TorchvisionDataModule("mnist", str(root))
    with pytest.raises(UserError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(root.resolve()) in message
    assert str(root.resolve() / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    assert "data.root=" in message and "download=True" in message


def test_incomplete_root_lists_missing_files(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "batches.meta").unlink()
    with pytest.raises(UserError, match="lacks data_batch_3, batches.meta"):
        TorchvisionDataModule("cifar10", str(tmp_path)).setup("fit")


def test_relative_root_is_reported_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=str(tmp_path.resolve() / "data")):
        TorchvisionDataModule("fashion_mnist", "data").setup("fit")


def test_unknown_dataset_suggests_a_choice(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Did you mean 'mnist'"):
        TorchvisionDataModule("mnsit", str(tmp_path)).setup("fit")


def test_image_folder_split_in_three(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=10, size=12)
    dm = loaded(ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=4))
    assert dm.class_names == ["cat", "dog", "frog"]
    assert dm.input_shape == (3, 16, 16)
    sizes = {name: len(y) for name, (_, y) in dm.splits.items()}
    assert sizes == {"train": 20, "val": 5, "test": 5}
    assert sorted(counts(dm.splits["train"][1], 3)) == [6, 7, 7]
    assert abs(dm.splits["train"][0].mean().item()) < 1e-4
    assert [len(x) for x, _ in dm.train_dataloader()] == [4] * 5


def test_image_folder_with_train_and_test_folders(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", per_class=10)
    write_image_folder(tmp_path / "test", classes=("dog", "frog"), per_class=3, seed=1)
    dm = loaded(ImageFolderDataModule(str(tmp_path), image_size=8, grayscale=True))
    assert dm.class_names == ["cat", "dog", "frog"]
    assert dm.input_shape == (1, 8, 8)
    x_test, y_test = dm.splits["test"]
    # test/ numbers its classes 0, 1 on its own; they must map to dog=1 and frog=2.
    assert len(x_test) == 6 and counts(y_test, 3) == [0, 3, 3]
    assert len(dm.splits["val"][1]) == 5  # val_fraction 0.15 of the 30 training images
    assert len(dm.splits["train"][1]) == 25


def test_image_folder_test_classes_must_exist_in_train(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", classes=("cat", "dog"))
    write_image_folder(tmp_path / "test", classes=("cat", "emu"), per_class=2)
    with pytest.raises(UserError, match="emu"):
        ImageFolderDataModule(str(tmp_path)).setup("fit")


def test_image_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(UserError) as err:
        ImageFolderDataModule(str(tmp_path)).setup("fit")
    assert str(tmp_path.resolve()) in str(err.value)
    assert "root/<class_name>/<image>.png" in str(err.value)


def test_image_folder_class_folders_without_images(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    with pytest.raises(UserError, match="root/<class_name>/<image>.png"):
        ImageFolderDataModule(str(tmp_path)).setup("fit")


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataModule(str(tmp_path / "photos")).setup("fit")


def test_too_few_images_to_split_is_a_user_error(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=2)
    with pytest.raises(UserError, match="Cannot split 6 images of 3 classes"):
        ImageFolderDataModule(str(tmp_path)).setup("fit")
