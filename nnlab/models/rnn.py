"""Recurrent network builder: stacked RNN/LSTM/GRU layers, optional norm between them."""

from __future__ import annotations

from torch import Tensor, nn

from nnlab.errors import UserError, choice_error
from nnlab.models.layers import make_activation, make_norm

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentClassifier(nn.Module):
    """Reads a (batch, time, features) sequence; classifies from the last step's output.

    Layers are separate modules (not one multi-layer nn.LSTM) so a normalization layer can sit
    between them, as `norm=layer` asks.
    """

    def __init__(
        self, layers: list[nn.Module], norms: list[nn.Module], dropout: float, head: nn.Module
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x, _ = layer(x)
            if i < len(self.layers) - 1:
                batch, steps, width = x.shape
                # BatchNorm1d wants (N, C): normalize every step of every sequence alike.
                x = self.norms[i](x.reshape(batch * steps, width)).reshape(batch, steps, width)
                x = self.dropout(x)
        return self.head(self.dropout(x[:, -1]))


def build_rnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    cell: str = "lstm",
    hidden: int = 128,
    layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    norm: str = "none",
    norm_groups: int = 8,
    activation: str = "tanh",
) -> RecurrentClassifier:
    """An RNN classifier for (time steps, features) inputs.

    `activation` is the nonlinearity of plain RNN cells (tanh or relu, as torch allows); LSTM and
    GRU gates have their fixed sigmoid/tanh.
    """
    if cell not in CELLS:
        raise choice_error("model.cell", cell, CELLS)
    if len(input_shape) != 2:
        raise UserError(
            f"model=rnn needs sequence data shaped (time steps, features), but this dataset gives "
            f"inputs of shape {tuple(input_shape)}. Use data=digits_seq (each digit read row by "
            f"row), or model=mlp / model=cnn for this dataset."
        )
    kwargs: dict = {"batch_first": True, "bidirectional": bidirectional}
    if cell == "rnn":
        if activation not in ("tanh", "relu"):
            make_activation(activation)  # an unknown name gets the usual did-you-mean error
            raise UserError(
                f"A plain RNN cell supports activation=tanh or activation=relu, not "
                f"'{activation}' (torch.nn.RNN's nonlinearity). LSTM and GRU ignore activation."
            )
        kwargs["nonlinearity"] = activation
    width = hidden * (2 if bidirectional else 1)
    stack = [
        CELLS[cell](input_shape[1] if i == 0 else width, hidden, **kwargs) for i in range(layers)
    ]
    norms = [make_norm(norm, (width,), norm_groups) for _ in range(layers - 1)]
    return RecurrentClassifier(stack, norms, dropout, nn.Linear(width, num_classes))
