"""GAN builders: a generator and a discriminator sized for the dataset's image shape.

Two variants, as torchvision builds one function per variant:
- mlp: fully connected nets on flattened images;
- dcgan: transposed convolutions up from (H/4, W/4) in G, strided convolutions down in D.
Normalization sits where DCGAN puts it: after every hidden layer of G, and after every layer of D
but the first (normalizing raw pixels in D destabilizes training).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nnlab.choices import GAN_ARCHS
from nnlab.errors import UserError, choice_error
from nnlab.models.layers import make_activation, make_norm


class MinibatchStd(nn.Module):
    """Appends one feature: the mean standard deviation of every feature across the batch.

    A generator that collapses onto a few modes produces batches with too little variety; this
    lets the discriminator see that, and so push G to cover the data (Karras et al., 2018).
    """

    def forward(self, x: Tensor) -> Tensor:
        std = x.std(dim=0, unbiased=False).mean() if len(x) > 1 else x.new_zeros(())
        return torch.cat([x, std.expand(len(x), 1)], dim=1)


class GAN(nn.Module):
    """A generator G: noise (batch, latent_dim) → images, and a discriminator D: images → logits."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        latent_dim: int,
        image_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator).to(device)


def _mlp_generator(
    latent_dim: int, shape: tuple[int, ...], hidden: int, depth: int, norm: str, act: str
) -> nn.Module:
    layers: list[nn.Module] = []
    width = latent_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), make_norm(norm, (hidden,)), make_activation(act)]
        width = hidden
    layers += [nn.Linear(width, math.prod(shape)), nn.Tanh(), nn.Unflatten(1, shape)]
    return nn.Sequential(*layers)


def _mlp_discriminator(
    shape: tuple[int, ...], hidden: int, depth: int, norm: str, act: str, minibatch_std: bool
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for i in range(depth):
        first = i == 0
        layers += [
            nn.Linear(width, hidden),
            nn.Identity() if first else make_norm(norm, (hidden,)),
            make_activation(act),
        ]
        width = hidden
    if minibatch_std:
        layers.append(MinibatchStd())
    layers.append(nn.Linear(width + int(minibatch_std), 1))
    return nn.Sequential(*layers)


def _dcgan_generator(
    latent_dim: int, shape: tuple[int, ...], channels: int, norm: str, act: str
) -> nn.Module:
    c, h, w = shape
    start = (channels * 2, h // 4, w // 4)
    return nn.Sequential(
        nn.Linear(latent_dim, math.prod(start)),
        nn.Unflatten(1, start),
        make_norm(norm, start),
        make_activation(act),
        nn.ConvTranspose2d(channels * 2, channels, 4, stride=2, padding=1),
        make_norm(norm, (channels, h // 2, w // 2)),
        make_activation(act),
        nn.ConvTranspose2d(channels, c, 4, stride=2, padding=1),
        nn.Tanh(),
    )


def _dcgan_discriminator(
    shape: tuple[int, ...], channels: int, norm: str, act: str, minibatch_std: bool
) -> nn.Module:
    c, h, w = shape
    features = channels * 2 * (h // 4) * (w // 4)
    layers: list[nn.Module] = [
        nn.Conv2d(c, channels, 4, stride=2, padding=1),
        make_activation(act),
        nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1),
        make_norm(norm, (channels * 2, h // 4, w // 4)),
        make_activation(act),
        nn.Flatten(),
    ]
    if minibatch_std:
        layers.append(MinibatchStd())
    layers.append(nn.Linear(features + int(minibatch_std), 1))
    return nn.Sequential(*layers)


def build_gan(
    input_shape: tuple[int, ...],
    num_outputs: int,
    arch: str = "mlp",
    latent_dim: int = 64,
    hidden: int = 256,
    depth: int = 3,
    channels: int = 64,
    minibatch_std: bool = True,
    norm: str = "batch",
    activation: str = "relu",
    d_activation: str = "leaky_relu",
) -> GAN:
    """A GAN for (C, H, W) images. `hidden`/`depth` size the mlp variant, `channels` the dcgan one;
    `activation` is G's nonlinearity and `d_activation` D's. `num_outputs` (the class count) is
    not used: the GAN is unconditional. The defaults are conf/model/gan.yaml's under
    train.yaml's norm= and activation=."""
    if arch not in GAN_ARCHS:
        raise choice_error("model.arch", arch, GAN_ARCHS)
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise UserError(
            f"model=gan generates images, so it needs an image dataset shaped (channels, height, "
            f"width), but this dataset gives inputs of shape {shape}. Use data=digits (the "
            f"default), mnist, fashion_mnist, cifar10 or image_folder."
        )
    if arch == "dcgan":
        if shape[1] % 4 or shape[2] % 4:
            raise UserError(
                f"model.arch=dcgan doubles the image size twice, so height and width must be "
                f"multiples of 4, but the images are {shape[1]}×{shape[2]}. Use model.arch=mlp, "
                f"or resize the images (data.image_size for image_folder)."
            )
        generator = _dcgan_generator(latent_dim, shape, channels, norm, activation)
        discriminator = _dcgan_discriminator(shape, channels, norm, d_activation, minibatch_std)
    else:
        generator = _mlp_generator(latent_dim, shape, hidden, depth, norm, activation)
        discriminator = _mlp_discriminator(shape, hidden, depth, norm, d_activation, minibatch_std)
    return GAN(generator, discriminator, latent_dim, shape)
