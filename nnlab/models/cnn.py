"""Convolutional network builder: conv stages with pooling, then fully connected layers."""

from __future__ import annotations

from torch import Tensor, nn

from nnlab.errors import UserError
from nnlab.models.layers import make_activation, make_norm


class ConvUnit(nn.Sequential):
    """conv → norm → activation, size-preserving."""

    def __init__(
        self, cin: int, cout: int, size: int, kernel: int, norm: str, groups: int, act: str
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm == "none"),
            make_norm(norm, (cout, size, size), groups),
            make_activation(act),
        )


class ResidualBlock(nn.Module):
    """Two conv units with an identity skip: the gradient has a path around both."""

    def __init__(self, channels: int, size: int, kernel: int, norm: str, groups: int, act: str):
        super().__init__()
        self.body = nn.Sequential(
            ConvUnit(channels, channels, size, kernel, norm, groups, act),
            nn.Conv2d(channels, channels, kernel, padding=kernel // 2),
        )
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


def build_cnn(
    input_shape: tuple[int, ...],
    num_outputs: int,
    channels: list[int] = (32, 64, 128),
    kernel_size: int = 3,
    residual: bool = False,
    fc_hidden: int = 128,
    dropout: float = 0.25,
    norm: str = "batch",
    norm_groups: int = 8,
    activation: str = "relu",
) -> nn.Sequential:
    """A CNN for (C, H, W) images: each stage is conv (+ residual block) then 2×2 max-pooling.
    The defaults are conf/model/cnn.yaml's under train.yaml's norm= and activation=."""
    if len(input_shape) != 3:
        raise UserError(
            f"model=cnn needs image data shaped (channels, height, width), but this dataset gives "
            f"inputs of shape {tuple(input_shape)}. Use model=mlp for tabular data, or an image "
            f"dataset (digits, mnist, fashion_mnist, cifar10, image_folder)."
        )
    cin, size, width = input_shape
    if size >> len(channels) < 1 or width >> len(channels) < 1:
        raise UserError(
            f"model.channels has {len(channels)} stages, and each halves the image, but the "
            f"images are only {size}×{width}: use at most {min(size, width).bit_length() - 1} "
            f"stages (for example model.channels=[32,64])."
        )
    layers: list[nn.Module] = []
    for cout in channels:
        layers.append(ConvUnit(cin, cout, size, kernel_size, norm, norm_groups, activation))
        if residual:
            layers.append(ResidualBlock(cout, size, kernel_size, norm, norm_groups, activation))
        layers.append(nn.MaxPool2d(2))
        cin, size, width = cout, size // 2, width // 2
    layers += [nn.Flatten(), nn.Dropout(dropout) if dropout > 0 else nn.Identity()]
    features = cin * size * width
    if fc_hidden > 0:
        layers += [nn.Linear(features, fc_hidden), make_activation(activation)]
        features = fc_hidden
    layers.append(nn.Linear(features, num_outputs))
    return nn.Sequential(*layers)
