"""Multilayer perceptron builder."""

from __future__ import annotations

from torch import Tensor, nn

from nnlab.choices import ENGINES
from nnlab.errors import choice_error
from nnlab.models.layers import flat_size, make_activation, make_norm
from nnlab.scratch import engine as scratch
from nnlab.scratch.modules import HandWritten


class HiddenLayer(nn.Module):
    """linear → norm → activation → dropout, with an optional identity skip around it."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        norm: str,
        norm_groups: int,
        activation: str,
        dropout: float,
        residual: bool,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = make_norm(norm, (out_features,), norm_groups)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # The first layer changes width, so an identity skip only fits where sizes match.
        self.residual = residual and in_features == out_features

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(self.act(self.norm(self.linear(x))))
        return x + out if self.residual else out


class MLP(nn.Module):
    def __init__(self, layers: list[HiddenLayer], head: nn.Linear) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.ModuleList(layers)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)


class BackpropMLP(HandWritten, MLP):
    """An MLP of linear layers and one activation, differentiated by hand (model.engine=scratch).
    Same parameters (names, shapes, initialization) as the autograd MLP it is built like."""

    def __init__(self, layers: list[HiddenLayer], head: nn.Linear, activation: str) -> None:
        super().__init__(layers, head)
        self.activation = activation
        linears = [layer.linear for layer in layers] + [head]
        self._weights = [layer.weight for layer in linears]
        self._biases = [layer.bias for layer in linears]

    def forward(self, x: Tensor) -> Tensor:
        return scratch.network_output(self.activation, self.flatten(x), self._weights, self._biases)

    def cost(self, loss: str, logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
        """nnlab's loss= on class targets, with BP1 for its gradient: what a task trains this
        network with instead of its own loss, so no derivative is left to autograd."""
        return scratch.cost(loss, self.activation, logits, target, num_classes)


def build_mlp(
    input_shape: tuple[int, ...],
    num_outputs: int,
    hidden: int = 256,
    depth: int = 2,
    dropout: float = 0.1,
    residual: bool = False,
    norm: str = "batch",
    norm_groups: int = 8,
    activation: str = "relu",
    engine: str = "autograd",
) -> MLP:
    """An MLP taking inputs of any shape (flattened) to `num_outputs` values (logits or
    regression outputs). engine=scratch differentiates it with nnlab/scratch's backprop.
    The defaults are conf/model/mlp.yaml's under train.yaml's norm= and activation=."""
    if engine not in ENGINES:
        raise choice_error("model.engine", engine, ENGINES)
    if engine == "scratch":
        scratch.check_supported(norm, dropout, residual)
    sizes = [flat_size(tuple(input_shape))] + [hidden] * depth
    layers = [
        HiddenLayer(i, o, norm, norm_groups, activation, dropout, residual)
        for i, o in zip(sizes[:-1], sizes[1:], strict=False)
    ]
    head = nn.Linear(sizes[-1], num_outputs)
    if engine == "scratch":
        return BackpropMLP(layers, head, activation)
    return MLP(layers, head)
