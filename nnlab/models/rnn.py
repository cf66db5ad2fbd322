"""Recurrent network builder: stacked RNN/LSTM/GRU layers, optional norm between them."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from nnlab.choices import CELLS, ENGINES, RNN_NONLINEARITIES
from nnlab.errors import UserError, choice_error
from nnlab.models.layers import make_activation, make_norm
from nnlab.scratch.engine import refuse
from nnlab.scratch.gated import ScratchGRU, ScratchLSTM, ScratchRNN
from nnlab.scratch.modules import HandWritten, ScratchLinear
from nnlab.scratch.norm import ScratchBatchNorm, ScratchLayerNorm

BUILDER = "nnlab.models.rnn.build_rnn"  # the _target_ that builds this network


class RecurrentNet(nn.Module):
    """Reads a (batch, time, features) sequence, or a (batch, channels, length) signal when
    `channels_first` (as L steps of C features); maps its final state to the outputs.

    Layers are separate modules (not one multi-layer nn.LSTM) so a normalization layer can sit
    between them, as `norm=layer` asks. Given `lengths`, padded sequences are packed, so padding
    never enters the recurrence or the normalization statistics.
    """

    def __init__(
        self,
        layers: list[nn.Module],
        norms: list[nn.Module],
        dropout: float,
        head: nn.Module,
        channels_first: bool = False,
    ) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = head

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if self.channels_first:
            x = x.transpose(1, 2)
        seq: Tensor | PackedSequence = x
        if lengths is not None:
            seq = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        for i, layer in enumerate(self.layers):
            seq, state = layer(seq)
            if i < len(self.layers) - 1:
                seq = self._between(i, seq)
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
        # The last layer's final state, both directions when bidirectional: with packing this is
        # each sequence's own last step, and the backward direction has read the whole sequence.
        final = torch.cat(list(hidden[-(2 if layer.bidirectional else 1) :]), dim=1)
        return self.head(self.dropout(final))

    def _between(self, i: int, seq: Tensor | PackedSequence) -> Tensor | PackedSequence:
        if isinstance(seq, PackedSequence):
            # .data holds only real steps, (total steps, width): exactly what the norm wants.
            return seq._replace(data=self.dropout(self.norms[i](seq.data)))
        batch, steps, width = seq.shape
        # BatchNorm1d wants (N, C): normalize every step of every sequence alike.
        flat = self.norms[i](seq.reshape(batch * steps, width))
        return self.dropout(flat.reshape(batch, steps, width))


class ScratchRecurrentNet(HandWritten, RecurrentNet):
    """RecurrentNet on model.engine=scratch: its layers are nnlab/scratch's drop-ins (BPTT, the
    norms and the head by hand) under the autograd net's parameter names, and HandWritten brings
    the hand-written cost (BP1) for the task to train with. Sequences must all have one length."""

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if lengths is not None:
            raise UserError(
                "model.engine=scratch runs BPTT over whole sequences, so it cannot read this "
                "dataset's sequences of different lengths (packed, data.min_length < "
                "data.length). Set data.min_length=null, or use model.engine=autograd."
            )
        return super().forward(x)


# model.engine=scratch: the hand-written drop-in for each torch layer of the autograd net
SCRATCH_CELLS = {"lstm": ScratchLSTM, "gru": ScratchGRU, "rnn": ScratchRNN}
SCRATCH_NORMS = {"none": nn.Identity, "batch": ScratchBatchNorm, "layer": ScratchLayerNorm}


def check_scratch(norm: str, dropout: float) -> None:
    """Refuse, before any training, what the hand-written RNN engine does not cover."""
    refuse(
        [
            (norm not in SCRATCH_NORMS, f"norm={norm}", "norm=none (or layer, batch)"),
            (dropout > 0, f"model.dropout={dropout}", "model.dropout=0"),
        ],
        "model=rnn model.engine=scratch runs its cells through time by hand (BPTT), with "
        "norm=none, layer or batch between layers and no dropout",
        "nnlab train model=rnn data=digits_seq model.engine=scratch norm=none model.dropout=0",
    )


def build_rnn(
    input_shape: tuple[int, ...],
    num_outputs: int,
    cell: str = "lstm",
    hidden: int = 128,
    layers: int = 2,
    bidirectional: bool = False,
    dropout: float = 0.1,
    norm: str = "batch",
    norm_groups: int = 8,
    activation: str = "relu",
    signal: bool = False,
    engine: str = "autograd",
) -> RecurrentNet:
    """An RNN for (time steps, features) inputs, or for (channels, length) signals when
    `signal` (read as `length` steps of `channels` features), to class logits or regression
    outputs.

    `activation` is the nonlinearity of plain RNN cells (tanh or relu, as torch allows); LSTM and
    GRU gates have their fixed sigmoid/tanh. The defaults are conf/model/rnn.yaml's under
    train.yaml's norm= and activation=. engine=scratch builds the same network (same
    parameters, same initialization) from nnlab/scratch's hand-written layers.
    """
    if cell not in CELLS:
        raise choice_error("model.cell", cell, CELLS)
    if engine not in ENGINES:
        raise choice_error("model.engine", engine, ENGINES)
    if engine == "scratch":
        check_scratch(norm, dropout)
    if len(input_shape) != 2:
        raise UserError(
            f"model=rnn needs sequence data shaped (time steps, features), or signals shaped "
            f"(channels, length) from data=arrays, but this dataset gives inputs of shape "
            f"{tuple(input_shape)}. Use data=digits_seq (each digit read row by row), data=adding "
            f"or data=sine, or model=mlp / model=cnn for this dataset."
        )
    features = input_shape[0] if signal else input_shape[1]
    kwargs: dict = {"batch_first": True, "bidirectional": bidirectional}
    if cell == "rnn":
        if activation not in RNN_NONLINEARITIES:
            make_activation(activation)  # an unknown name gets the usual did-you-mean error
            raise UserError(
                f"A plain RNN cell supports activation=tanh or activation=relu, not "
                f"'{activation}' (torch.nn.RNN's nonlinearity). LSTM and GRU ignore activation."
            )
        kwargs["nonlinearity"] = activation
    width = hidden * (2 if bidirectional else 1)
    if engine == "scratch":
        # built in the autograd net's order, so one seed draws the same initial weights
        cells = SCRATCH_CELLS[cell]
        stack = [cells(features if i == 0 else width, hidden, **kwargs) for i in range(layers)]
        norms = [SCRATCH_NORMS[norm](width) for _ in range(layers - 1)]
        head = ScratchLinear(width, num_outputs)
        return ScratchRecurrentNet(stack, norms, dropout, head, channels_first=signal)
    module = getattr(nn, cell.upper())  # nn.LSTM, nn.GRU or nn.RNN
    stack = [module(features if i == 0 else width, hidden, **kwargs) for i in range(layers)]
    norms = [make_norm(norm, (width,), norm_groups) for _ in range(layers - 1)]
    return RecurrentNet(stack, norms, dropout, nn.Linear(width, num_outputs), channels_first=signal)
