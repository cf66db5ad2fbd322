"""The default `nnlab train` job written as a plain PyTorch script: what bench_startup.py times
nnlab's whole process against.

Same work as `nnlab train` with its defaults: scikit-learn's digits split 70/15/15 stratified
(split seed 0), standardized on the training split; an MLP 64-256-256-10 with batch norm, ReLU
and dropout 0.1; Adam at 1e-3; 30 epochs of batches of 64, shuffled per epoch; validation after
every epoch; the test split scored once at the end. What nnlab adds on top (run directory,
TensorBoard events, checkpoints, metrics files, plots) is part of what the comparison charges it
for. Prints the test accuracy so a broken script shows.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

EPOCHS, BATCH, SEED, SPLIT_SEED = 30, 64, 42, 0


def splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    rest, test = train_test_split(
        np.arange(len(y)), test_size=0.15, stratify=y, random_state=SPLIT_SEED
    )
    train, val = train_test_split(
        rest, test_size=0.15 / 0.85, stratify=y[rest], random_state=SPLIT_SEED
    )
    mean, std = x[train].mean(), x[train].std()
    return {
        name: (torch.from_numpy((x[part] - mean) / std), torch.from_numpy(y[part]))
        for name, part in (("train", train), ("val", val), ("test", test))
    }


def mlp() -> nn.Module:
    def block(n_in: int) -> list[nn.Module]:
        return [nn.Linear(n_in, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.1)]

    return nn.Sequential(*block(64), *block(256), nn.Linear(256, 10))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    torch.manual_seed(SEED)
    data = splits()
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data["train"]
    for _ in range(EPOCHS):
        model.train()
        for batch in torch.randperm(len(y)).split(BATCH):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracy(model, *data["val"])
    print(f"test acc {accuracy(model, *data['test']):.4f}")


if __name__ == "__main__":
    main()
