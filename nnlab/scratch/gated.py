"""LSTM and GRU cells through time, forward and backward by hand (BPTT), in torch's layout.

One layer, batch_first sequences x of shape (N, T, I), states (N, H), and the parameters as
torch.nn.LSTM / torch.nn.GRU store them: weight_ih_l0 (G·H × I), weight_hh_l0 (G·H × H),
bias_ih_l0 and bias_hh_l0 (G·H), the G gates stacked in torch's order (LSTM: i, f, g, o;
GRU: r, z, n). Rows are samples, so "W x" in the equations is `x @ W.T` in the code, and
∂C/∂x = Wᵀ δ is `δ @ W`.

The cost C may depend on every hidden state h_1 … h_T and on the final (h_T, c_T): the
backward pass takes an upstream gradient for each. BPTT walks the steps in reverse; each
step's error δ_t = ∂C/∂a_t (a_t the gates' pre-activations) reaches the shared weights, whose
gradients therefore SUM over time:

    ∂C/∂W_ih = Σ_t δ_t x_tᵀ      ∂C/∂W_hh = Σ_t δ_t h_{t−1}ᵀ      ∂C/∂b = Σ_t δ_t

The derivatives of the squashing functions are written from their outputs:
σ'(a) = σ(a)(1 − σ(a)) and tanh'(a) = 1 − tanh²(a).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nnlab.scratch.checking import DTYPE, Row, generator, randn, relative_error

CASES = ((2, 1, 3, 4), (3, 5, 2, 3), (1, 12, 4, 2), (4, 12, 1, 5))  # (N, T, I, H) per check


def sigmoid_prime(s: Tensor) -> Tensor:
    """σ'(a) from s = σ(a)."""
    return s * (1 - s)


def tanh_prime(t: Tensor) -> Tensor:
    """tanh'(a) from t = tanh(a)."""
    return 1 - t * t


class LSTMCache(NamedTuple):
    """What the backward pass needs: h_0 … h_T and c_0 … c_T as (N, T+1, H), the gate values
    [i, f, g, o] of steps 1 … T as (N, T, 4H), and the two weight matrices."""

    x: Tensor
    h: Tensor
    c: Tensor
    gates: Tensor
    w_ih: Tensor
    w_hh: Tensor


class GRUCache(NamedTuple):
    """h_0 … h_T (N, T+1, H), the gate values [r, z, n] (N, T, 3H), m = W_hn h_{t−1} + b_hn
    (N, T, H) that r gates, and the two weight matrices."""

    x: Tensor
    h: Tensor
    gates: Tensor
    m: Tensor
    w_ih: Tensor
    w_hh: Tensor


def lstm_forward(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor, Tensor, LSTMCache]:
    """All hidden states (N, T, H), the final h_T and c_T, and the cache for the backward pass.

    For t = 1 … T:
        a_t = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh = [a_i, a_f, a_g, a_o]
        i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
        c_t = f ⊙ c_{t−1} + i ⊙ g
        h_t = o ⊙ tanh(c_t)
    """
    from_x = x @ w_ih.T + b_ih  # W_ih x_t + b_ih for every step at once: no recurrence in it
    hs, cs, gates = [h0], [c0], []
    for t in range(1, x.shape[1] + 1):
        a = from_x[:, t - 1] + hs[-1] @ w_hh.T + b_hh  # a_t
        a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
        cs.append(f * cs[-1] + i * g)  # c_t = f ⊙ c_{t−1} + i ⊙ g
        hs.append(o * torch.tanh(cs[-1]))  # h_t = o ⊙ tanh(c_t)
        gates.append(torch.cat([i, f, g, o], dim=1))
    h, c = torch.stack(hs, dim=1), torch.stack(cs, dim=1)
    cache = LSTMCache(x, h, c, torch.stack(gates, dim=1), w_ih, w_hh)
    return h[:, 1:], hs[-1], cs[-1], cache


def lstm_backward(
    cache: LSTMCache, grad_out: Tensor, grad_h: Tensor, grad_c: Tensor
) -> tuple[Tensor, ...]:
    """∂C/∂x, ∂C/∂h_0, ∂C/∂c_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh, given ∂C/∂h_t from
    above for every step (grad_out, (N, T, H)) and for the final h_T and c_T.

    For t = T … 1, with ∂C/∂h_t = (from above)_t + W_hhᵀ δ_{t+1} and ∂C/∂c_t carried back:
        ∂C/∂c_t += ∂C/∂h_t ⊙ o ⊙ tanh'(c_t)                 h_t = o ⊙ tanh(c_t)
        δ_i = ∂C/∂c_t ⊙ g ⊙ σ'(a_i)                         c_t = f ⊙ c_{t−1} + i ⊙ g
        δ_f = ∂C/∂c_t ⊙ c_{t−1} ⊙ σ'(a_f)
        δ_g = ∂C/∂c_t ⊙ i ⊙ tanh'(a_g)
        δ_o = ∂C/∂h_t ⊙ tanh(c_t) ⊙ σ'(a_o)
        ∂C/∂c_{t−1} = ∂C/∂c_t ⊙ f       the long memory: no weight matrix, no squashing,
                                         only the forget gate scales it from step to step
        ∂C/∂h_{t−1} = W_hhᵀ δ_t          δ_t = [δ_i, δ_f, δ_g, δ_o]
        ∂C/∂x_t = W_ihᵀ δ_t
    then the weight gradients summed over time (module docstring); ∂C/∂b_ih = ∂C/∂b_hh = Σ_t δ_t.
    """
    x, h, c, gates, w_ih, w_hh = cache
    deltas = torch.empty_like(gates)  # δ_t of every step, for the sums over time
    dh, dc = grad_h, grad_c
    for t in range(x.shape[1], 0, -1):
        dh = dh + grad_out[:, t - 1]  # ∂C/∂h_t: from above, and from step t+1 through W_hh
        i, f, g, o = gates[:, t - 1].chunk(4, dim=1)
        tanh_c = torch.tanh(c[:, t])
        dc = dc + dh * o * tanh_prime(tanh_c)
        deltas[:, t - 1] = torch.cat(
            [
                dc * g * sigmoid_prime(i),  # δ_i
                dc * c[:, t - 1] * sigmoid_prime(f),  # δ_f
                dc * i * tanh_prime(g),  # δ_g
                dh * tanh_c * sigmoid_prime(o),  # δ_o
            ],
            dim=1,
        )
        dh = deltas[:, t - 1] @ w_hh  # ∂C/∂h_{t−1} = W_hhᵀ δ_t
        dc = dc * f  # ∂C/∂c_{t−1} = ∂C/∂c_t ⊙ f
    grad_b = deltas.sum(dim=(0, 1))  # Σ_t δ_t, over the batch too
    return (
        deltas @ w_ih,  # ∂C/∂x_t = W_ihᵀ δ_t, every step at once
        dh,
        dc,
        torch.einsum("ntg,nti->gi", deltas, x),  # Σ_t δ_t x_tᵀ
        torch.einsum("ntg,nth->gh", deltas, h[:, :-1]),  # Σ_t δ_t h_{t−1}ᵀ
        grad_b,
        grad_b.clone(),
    )


def gru_forward(
    x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor, GRUCache]:
    """All hidden states (N, T, H), the final h_T, and the cache for the backward pass.

    For t = 1 … T (torch's GRU: r gates W_hn h + b_hn, bias included):
        r = σ(W_ir x_t + b_ir + W_hr h_{t−1} + b_hr)
        z = σ(W_iz x_t + b_iz + W_hz h_{t−1} + b_hz)
        m = W_hn h_{t−1} + b_hn
        n = tanh(W_in x_t + b_in + r ⊙ m)
        h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
    """
    from_x = x @ w_ih.T + b_ih  # the input's share of every gate, all steps at once
    hs, gates, ms = [h0], [], []
    for t in range(1, x.shape[1] + 1):
        x_r, x_z, x_n = from_x[:, t - 1].chunk(3, dim=1)
        h_r, h_z, m = (hs[-1] @ w_hh.T + b_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * m)
        hs.append((1 - z) * n + z * hs[-1])  # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
        gates.append(torch.cat([r, z, n], dim=1))
        ms.append(m)
    h = torch.stack(hs, dim=1)
    cache = GRUCache(x, h, torch.stack(gates, dim=1), torch.stack(ms, dim=1), w_ih, w_hh)
    return h[:, 1:], hs[-1], cache


def gru_backward(cache: GRUCache, grad_out: Tensor, grad_h: Tensor) -> tuple[Tensor, ...]:
    """∂C/∂x, ∂C/∂h_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh, given ∂C/∂h_t from above for
    every step (grad_out, (N, T, H)) and for the final h_T.

    For t = T … 1, with ∂C/∂h_t = (from above)_t + (from step t+1):
        δ_n = ∂C/∂h_t ⊙ (1 − z) ⊙ tanh'(a_n)              a_n = W_in x_t + b_in + r ⊙ m
        δ_z = ∂C/∂h_t ⊙ (h_{t−1} − n) ⊙ σ'(a_z)
        δ_r = δ_n ⊙ m ⊙ σ'(a_r)
    The input and hidden sides see different errors, since r multiplies only the hidden one:
        δˣ_t = [δ_r, δ_z, δ_n]        δʰ_t = [δ_r, δ_z, r ⊙ δ_n]
        ∂C/∂h_{t−1} = z ⊙ ∂C/∂h_t + W_hhᵀ δʰ_t    z ⊙ …: the direct path, GRU's long memory
        ∂C/∂x_t = W_ihᵀ δˣ_t
        ∂C/∂W_ih = Σ_t δˣ_t x_tᵀ        ∂C/∂b_ih = Σ_t δˣ_t
        ∂C/∂W_hh = Σ_t δʰ_t h_{t−1}ᵀ    ∂C/∂b_hh = Σ_t δʰ_t
    """
    x, h, gates, ms, w_ih, w_hh = cache
    deltas_x, deltas_h = torch.empty_like(gates), torch.empty_like(gates)
    dh = grad_h
    for t in range(x.shape[1], 0, -1):
        dh = dh + grad_out[:, t - 1]  # ∂C/∂h_t
        r, z, n = gates[:, t - 1].chunk(3, dim=1)
        delta_n = dh * (1 - z) * tanh_prime(n)
        delta_z = dh * (h[:, t - 1] - n) * sigmoid_prime(z)
        delta_r = delta_n * ms[:, t - 1] * sigmoid_prime(r)
        deltas_x[:, t - 1] = torch.cat([delta_r, delta_z, delta_n], dim=1)  # δˣ_t
        deltas_h[:, t - 1] = torch.cat([delta_r, delta_z, r * delta_n], dim=1)  # δʰ_t
        dh = z * dh + deltas_h[:, t - 1] @ w_hh  # ∂C/∂h_{t−1}
    return (
        deltas_x @ w_ih,  # ∂C/∂x_t = W_ihᵀ δˣ_t
        dh,
        torch.einsum("ntg,nti->gi", deltas_x, x),  # Σ_t δˣ_t x_tᵀ
        torch.einsum("ntg,nth->gh", deltas_h, h[:, :-1]),  # Σ_t δʰ_t h_{t−1}ᵀ
        deltas_x.sum(dim=(0, 1)),
        deltas_h.sum(dim=(0, 1)),
    )


class RNNCache(NamedTuple):
    """h_0 … h_T (N, T+1, H) and the two weight matrices: the plain cell needs nothing else."""

    x: Tensor
    h: Tensor
    w_ih: Tensor
    w_hh: Tensor


def rnn_forward(
    x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, relu: bool
) -> tuple[Tensor, Tensor, RNNCache]:
    """The plain (Elman) cell, torch.nn.RNN's: all hidden states, the final h_T, the cache.

    For t = 1 … T:   a_t = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh      h_t = tanh(a_t) (or relu)
    """
    from_x = x @ w_ih.T + b_ih
    hs = [h0]
    for t in range(1, x.shape[1] + 1):
        a = from_x[:, t - 1] + hs[-1] @ w_hh.T + b_hh  # a_t
        hs.append(a.clamp_min(0) if relu else torch.tanh(a))
    h = torch.stack(hs, dim=1)
    return h[:, 1:], hs[-1], RNNCache(x, h, w_ih, w_hh)


def rnn_backward(
    cache: RNNCache, grad_out: Tensor, grad_h: Tensor, relu: bool
) -> tuple[Tensor, ...]:
    """∂C/∂x, ∂C/∂h_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh (as gru_backward's).

    For t = T … 1:
        δ_t = ∂C/∂h_t ⊙ tanh'(a_t)        (relu: ⊙ [a_t > 0], read from h_t > 0)
        ∂C/∂h_{t−1} = W_hhᵀ δ_t           every step multiplies by W_hh and a derivative ≤ 1:
                                          the vanishing gradient the gated cells avoid
    """
    x, h, w_ih, w_hh = cache
    deltas = torch.empty_like(h[:, 1:])
    dh = grad_h
    for t in range(x.shape[1], 0, -1):
        dh = dh + grad_out[:, t - 1]  # ∂C/∂h_t
        h_t = h[:, t]
        deltas[:, t - 1] = dh * ((h_t > 0).to(h_t.dtype) if relu else tanh_prime(h_t))  # δ_t
        dh = deltas[:, t - 1] @ w_hh  # ∂C/∂h_{t−1} = W_hhᵀ δ_t
    grad_b = deltas.sum(dim=(0, 1))
    return (
        deltas @ w_ih,
        dh,
        torch.einsum("ntg,nti->gi", deltas, x),  # Σ_t δ_t x_tᵀ
        torch.einsum("ntg,nth->gh", deltas, h[:, :-1]),  # Σ_t δ_t h_{t−1}ᵀ
        grad_b,
        grad_b.clone(),
    )


class RNNFunction(torch.autograd.Function):
    """(relu, x, h_0, W_ih, W_hh, b_ih, b_hh) → (h_1 … h_T, h_T); backward: BPTT by hand."""

    @staticmethod
    def forward(ctx: Any, relu: bool, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n, cache = rnn_forward(*inputs, relu=relu)
        ctx.relu = relu
        ctx.save_for_backward(*cache)
        return out, h_n

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_h: Tensor) -> tuple[Tensor | None, ...]:
        return None, *rnn_backward(RNNCache(*ctx.saved_tensors), grad_out, grad_h, ctx.relu)


class LSTMFunction(torch.autograd.Function):
    """(x, h_0, c_0, W_ih, W_hh, b_ih, b_hh) → (h_1 … h_T, h_T, c_T); backward: BPTT by hand."""

    @staticmethod
    def forward(ctx: Any, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, h_n, c_n, cache = lstm_forward(*inputs)
        ctx.save_for_backward(*cache)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_h: Tensor, grad_c: Tensor) -> tuple[Tensor, ...]:
        return lstm_backward(LSTMCache(*ctx.saved_tensors), grad_out, grad_h, grad_c)


class GRUFunction(torch.autograd.Function):
    """(x, h_0, W_ih, W_hh, b_ih, b_hh) → (h_1 … h_T, h_T); backward: BPTT by hand."""

    @staticmethod
    def forward(ctx: Any, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n, cache = gru_forward(*inputs)
        ctx.save_for_backward(*cache)
        return out, h_n

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_h: Tensor) -> tuple[Tensor, ...]:
        return gru_backward(GRUCache(*ctx.saved_tensors), grad_out, grad_h)


PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


# ---- the engine's layers (model=rnn model.engine=scratch): autograd only calls BPTT above


def _directions(module: nn.RNNBase) -> list[list[Tensor]]:
    """Each direction's (W_ih, W_hh, b_ih, b_hh), forward first, under torch's names."""
    suffixes = ["", "_reverse"] if module.bidirectional else [""]
    return [[getattr(module, name + suffix) for name in PARAMS] for suffix in suffixes]


def _check_layout(module: nn.RNNBase) -> None:
    # One layer over (N, T, I) tensors is what the hand-written passes compute; the model
    # stacks layers itself, so anything else here is a programming error, not a user's.
    if module.num_layers != 1 or not module.batch_first or getattr(module, "proj_size", 0):
        raise ValueError("ScratchLSTM/ScratchGRU: one layer, batch_first=True, no projection")


class ScratchLSTM(nn.LSTM):
    """nn.LSTM's drop-in for one batch_first layer (same parameters, names and initialization,
    so a seed gives the same network and a state_dict moves between the engines), through
    LSTMFunction; the reverse direction reads x.flip(1) with the *_reverse parameters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_layout(self)

    def forward(self, x: Tensor, hx: Any = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        zeros = x.new_zeros(x.shape[0], self.hidden_size)
        outs, hs, cs = [], [], []
        for d, params in enumerate(_directions(self)):
            h0, c0 = (zeros, zeros) if hx is None else (hx[0][d], hx[1][d])
            seq = x.flip(1) if d else x  # the reverse direction reads the steps backwards
            out, h_n, c_n = LSTMFunction.apply(seq, h0, c0, *params)
            outs.append(out.flip(1) if d else out)
            hs.append(h_n)
            cs.append(c_n)
        return torch.cat(outs, dim=2), (torch.stack(hs), torch.stack(cs))


class ScratchGRU(nn.GRU):
    """nn.GRU's drop-in for one batch_first layer, through GRUFunction (as ScratchLSTM)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_layout(self)

    def forward(self, x: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        zeros = x.new_zeros(x.shape[0], self.hidden_size)
        outs, hs = [], []
        for d, params in enumerate(_directions(self)):
            seq = x.flip(1) if d else x
            out, h_n = GRUFunction.apply(seq, zeros if hx is None else hx[d], *params)
            outs.append(out.flip(1) if d else out)
            hs.append(h_n)
        return torch.cat(outs, dim=2), torch.stack(hs)


class ScratchRNN(nn.RNN):
    """nn.RNN's drop-in (tanh or relu) for one batch_first layer, through RNNFunction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_layout(self)

    def forward(self, x: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        zeros, relu = x.new_zeros(x.shape[0], self.hidden_size), self.nonlinearity == "relu"
        outs, hs = [], []
        for d, params in enumerate(_directions(self)):
            seq = x.flip(1) if d else x
            out, h_n = RNNFunction.apply(relu, seq, zeros if hx is None else hx[d], *params)
            outs.append(out.flip(1) if d else out)
            hs.append(h_n)
        return torch.cat(outs, dim=2), torch.stack(hs)


def check_lstm(seed: int = 0) -> list[Row]:
    """The hand-written LSTM against torch.nn.LSTM through autograd, in float64: the outputs,
    then ∂C/∂x, ∂C/∂h_0, ∂C/∂c_0 and every parameter's gradient, for every case in CASES."""
    return _check("lstm", seed)


def check_gru(seed: int = 0) -> list[Row]:
    """The hand-written GRU against torch.nn.GRU through autograd, in float64: the outputs,
    then ∂C/∂x, ∂C/∂h_0 and every parameter's gradient, for every case in CASES."""
    return _check("gru", seed)


def check_rnn(seed: int = 0) -> list[Row]:
    """The hand-written plain cell against torch.nn.RNN through autograd, in float64, with
    nonlinearity tanh and relu: outputs, then every gradient, for every case in CASES."""
    return _check("rnn_tanh", seed) + _check("rnn_relu", seed)


GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}  # weight blocks stacked per cell


def _check(cell: str, seed: int) -> list[Row]:
    gen, rows = generator(seed), []
    gates, states = GATES[cell], ("h0", "c0") if cell == "lstm" else ("h0",)
    for n, steps, inputs, hidden in CASES:
        case = f"N={n} T={steps} I={inputs} H={hidden}" + (f" {cell[4:]}" if gates == 1 else "")
        scale = 1 / math.sqrt(hidden)  # torch's own initial range
        rows_of = gates * hidden  # the gates stacked, as torch stores them
        shapes = [(rows_of, inputs), (rows_of, hidden), (rows_of,), (rows_of,)]  # PARAMS' order
        params = [randn(gen, *shape) * scale for shape in shapes]
        x = randn(gen, n, steps, inputs)
        initial = [randn(gen, n, hidden) for _ in states]
        # an upstream gradient for every h_t and for each final state: every path is checked
        upstream = [randn(gen, n, steps, hidden)] + [randn(gen, n, hidden) for _ in states]
        if cell == "lstm":
            *outputs, cache = lstm_forward(x, *initial, *params)
            mine = lstm_backward(cache, *upstream)
        elif cell == "gru":
            *outputs, cache = gru_forward(x, *initial, *params)
            mine = gru_backward(cache, *upstream)
        else:
            *outputs, cache = rnn_forward(x, *initial, *params, relu=cell == "rnn_relu")
            mine = rnn_backward(cache, *upstream, relu=cell == "rnn_relu")
        ref_outputs, reference = _torch_reference(cell, x, initial, params, upstream)
        forward = max(map(relative_error, outputs, ref_outputs))
        rows.append(Row(case, "forward: h_t and final states", forward))
        names = ["∂C/∂x", *(f"∂C/∂{s}" for s in states), *(f"∂C/∂{p}" for p in PARAMS)]
        rows += [
            Row(case, name, relative_error(a, b))
            for name, a, b in zip(names, mine, reference, strict=True)
        ]
    return rows


def _torch_reference(
    cell: str, x: Tensor, initial: list[Tensor], params: list[Tensor], upstream: list[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """torch.nn.LSTM / GRU's outputs and autograd's gradients of C = Σ upstream ⊙ outputs."""
    hidden = initial[0].shape[1]
    kind, _, nonlinearity = cell.partition("_")  # rnn_tanh → nn.RNN(nonlinearity="tanh")
    options = {"nonlinearity": nonlinearity} if nonlinearity else {}
    module = getattr(torch.nn, kind.upper())(
        x.shape[2], hidden, batch_first=True, dtype=DTYPE, **options
    )
    with torch.no_grad():
        for name, value in zip(PARAMS, params, strict=True):
            getattr(module, name).copy_(value)
    leaves = [t.clone().requires_grad_(True) for t in (x, *initial)]
    states = [s.unsqueeze(0) for s in leaves[1:]]  # torch wants (layers, N, H)
    out, final = module(leaves[0], tuple(states) if cell == "lstm" else states[0])
    outputs = [out, *(s[0] for s in (final if cell == "lstm" else (final,)))]
    cost = sum((o * u).sum() for o, u in zip(outputs, upstream, strict=True))
    cost.backward()
    grads = [t.grad for t in leaves] + [getattr(module, name).grad for name in PARAMS]
    return [o.detach() for o in outputs], grads
