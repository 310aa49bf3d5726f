"""The reference backend: the cell maths in plain PyTorch, one step at a time.

This file is the specification. `step` is one application of the state map
s_t = F(x_t, s_{t-1}) for any registered cell; `run_layer` is the loop over time that
every backend must reproduce (forward and backward), including variable lengths,
reversal for the backward direction of a bidirectional layer, and the 1997 truncated
gradient.

Shapes: B batch, T time, I input features, H hidden units, G = len(spec.gates), and
P the width of h: H, or proj_size for an LSTM cell with a projection (weight_hr).

The modern cells (docs/cells.md): slstm (Beck et al. 2024) with exponential input gate,
normaliser n and stabiliser m (detached: the output does not depend on it); minlstm and
mingru (Feng et al. 2024), whose gates see the input alone (no recurrent product).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cells import ACTIVATIONS, CellSpec

State = tuple[torch.Tensor, ...]  # in spec.state_names order: h (B, P), the others (B, width * H)


@dataclass
class CellParams:
    """The parameters of one layer and direction, in torch's layout (the fields are the
    names of CellSpec.param_shapes, which gives their shapes; absent ones are None).

    weight_ih (G*H, I), weight_hh (G*H, P) (slstm: (G*H, H // heads), block-diagonal over
        heads, compressed; minlstm / mingru: None), bias_ih / bias_hh (G*H,) or None,
    weight_ch (K*H,) peephole vectors for the K = len(spec.peephole_gates) gates, or None,
    weight_gg (A*H, A*H) gate-to-gate matrices for spec.recurrent_gates (FGR), or None,
    weight_hr (P, H) the projection of LSTM cells (torch's proj_size = P), or None: then
        h_t = (o_t * act(c_t)) @ weight_hr.T is P wide (and P = H without it).
    H is weight_ih.shape[0] // G, never weight_hh.shape[1] (which is P).
    """

    weight_ih: torch.Tensor
    weight_hh: torch.Tensor | None = None
    bias_ih: torch.Tensor | None = None
    bias_hh: torch.Tensor | None = None
    weight_ch: torch.Tensor | None = None
    weight_gg: torch.Tensor | None = None
    weight_hr: torch.Tensor | None = None


# CellParams's field names, the names CellSpec.param_shapes uses (a constant: torch.compile
# does not trace dataclasses.fields)
PARAM_NAMES: tuple[str, ...] = tuple(CellParams.__dataclass_fields__)


def input_projection(p: CellParams, x: torch.Tensor) -> torch.Tensor:
    """W x + b_ih for all steps at once: (..., I) -> (..., G*H), one product with the bias
    added in it (no second (..., G*H) tensor)."""
    return F.linear(x, p.weight_ih, p.bias_ih)


def _split(t: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return dict(zip(names, t.chunk(len(names), dim=-1)))


def recurrent_product(spec: CellSpec, p: CellParams, h: torch.Tensor) -> torch.Tensor:
    """R h_{t-1} + b_hh: (B, P) -> (B, G*H). slstm with heads > 1: block-diagonal, unit j
    of every gate block (in head d = j // dh) sees h[:, d*dh : (d+1)*dh] through row j of
    weight_hh (G*H, dh); dh = H // heads."""
    if spec.kind == "slstm" and spec.heads > 1:
        (B, H), dh = h.shape, p.weight_hh.shape[1]
        R = p.weight_hh.view(len(spec.gates), H // dh, dh, dh)  # (G, heads, dh out, dh in)
        hw = torch.einsum("bdk,gdjk->bgdj", h.reshape(B, H // dh, dh), R).reshape(B, len(spec.gates) * H)
    else:
        hw = h @ p.weight_hh.t()
    return hw + p.bias_hh if p.bias_hh is not None else hw


def pointwise(
    spec: CellSpec, p: CellParams, xw: torch.Tensor, state: State, truncate: bool = False, trace: dict | None = None
) -> State:
    """One step given the input projection xw = W x_t + b_ih, (B, G*H).

    The recurrent product R h_{t-1} is taken here too, so that the truncated rule can
    detach exactly what the 1997 paper truncates. If `trace` is a dict, the pre-activations
    and activations of the step are stored in it (the Jacobian code reads them).
    """
    h = state[0]
    if not spec.recurrent_weights:
        return _min_pointwise(spec, xw, h, trace)
    hw = recurrent_product(spec, p, h.detach() if truncate else h)
    if spec.kind == "rnn":
        pre = xw + hw
        new = (ACTIVATIONS[spec.activation].fn(pre),)
        if trace is not None:
            trace.update(pre=pre)
        return new
    if spec.kind == "gru":
        xs, hs = _split(xw, spec.gates), _split(hw, spec.gates)  # r z n
        r = torch.sigmoid(xs["r"] + hs["r"])
        z = torch.sigmoid(xs["z"] + hs["z"])
        n = torch.tanh(xs["n"] + r * hs["n"])
        if trace is not None:
            trace.update(r=r, z=z, n=n, hw_n=hs["n"])
        return ((1 - z) * n + z * h,)
    if spec.kind == "slstm":
        return _slstm_pointwise(spec, xw + hw, state, trace)
    return _lstm_pointwise(spec, p, xw + hw, state, truncate, trace)


def _log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log sigma(x) = -softplus(-x), exact for any x. (F.logsigmoid computes the same, but
    its CPU kernel is ~100 times slower on the small per-step tensors here.)"""
    return -F.softplus(-x)


def _min_pointwise(spec, xw, h, trace):
    """minlstm / mingru (Feng et al. 2024): gates and candidate from the input alone."""
    pre = _split(xw, spec.gates)  # (B, H) each
    h_tilde = ACTIVATIONS[spec.activation].fn(pre["h"])
    if spec.kind == "mingru":
        z = torch.sigmoid(pre["z"])
        if trace is not None:
            trace.update(pre=pre, z=z, h_tilde=h_tilde)
        return ((1 - z) * h + z * h_tilde,)
    # f' = f / (f + i) = sigma(log f - log i) and i' = 1 - f', in a form that neither
    # underflows nor divides 0 by 0 when both gates are tiny
    d = _log_sigmoid(pre["f"]) - _log_sigmoid(pre["i"])
    f, i = torch.sigmoid(d), torch.sigmoid(-d)
    if trace is not None:
        trace.update(pre=pre, f=f, i=i, h_tilde=h_tilde)
    return (f * h + i * h_tilde,)


def _slstm_pointwise(spec, pre_all, state, trace):
    """sLSTM (Beck et al. 2024), stabilised: m_t = max(log f + m_{t-1}, log i);
    i' = exp(log i - m_t), f' = exp(log f + m_{t-1} - m_t); c_t = f' c + i' z,
    n_t = f' n + i', h_t = o c_t / n_t. c and n are the paper's c~ and n~ times exp(-m_t), so
    h does not depend on m: m is detached (a constant to autograd) and gradients are exact."""
    _, c, n, m = state
    pre = _split(pre_all, spec.gates)  # i f z o, (B, H) each
    log_i = pre["i"]
    log_f = _log_sigmoid(pre["f"]) if spec.forget_activation == "sigmoid" else pre["f"]
    m_prev = m.detach()
    m_new = torch.maximum(log_f + m_prev, log_i).detach()
    i = torch.exp(log_i - m_new)
    f = torch.exp(log_f + m_prev - m_new)  # 0 when m_prev = -inf (the first step)
    z, o = torch.tanh(pre["z"]), torch.sigmoid(pre["o"])
    c_new = f * c + i * z
    n_new = f * n + i
    h_new = o * c_new / n_new
    if trace is not None:
        trace.update(pre=pre, i=i, f=f, z=z, o=o, c=c_new, n=n_new, m=m_new)
    return h_new, c_new, n_new, m_new


def _lstm_pointwise(spec, p, pre_all, state, truncate, trace):
    c = state[1]
    pre = _split(pre_all, spec.gates)  # (B, H) each
    if spec.gate_recurrence:
        a = state[2].detach() if truncate else state[2]
        fb = _split(a @ p.weight_gg.t(), spec.recurrent_gates)
        pre = {k: v + fb[k] if k in fb else v for k, v in pre.items()}
    peep = _split(p.weight_ch, spec.peephole_gates) if spec.peepholes else {}
    c_seen = c.detach() if truncate else c  # what the peepholes read
    for g in ("i", "f"):
        if g in peep:
            pre[g] = pre[g] + peep[g] * c_seen
    one = torch.ones_like(c)
    i = torch.sigmoid(pre["i"]) if spec.input_gate else one
    f = {"free": lambda: torch.sigmoid(pre["f"]), "coupled": lambda: 1 - i, "none": lambda: one}[spec.forget_gate]()
    g = ACTIVATIONS[spec.activation].fn(pre["g"])
    c_new = f * c + i * g  # the Constant Error Carousel when f = 1
    if "o" in peep:
        pre["o"] = pre["o"] + peep["o"] * (c_new.detach() if truncate else c_new)
    o = torch.sigmoid(pre["o"]) if spec.output_gate else one
    h_new = o * ACTIVATIONS[spec.output_activation].fn(c_new)
    if p.weight_hr is not None:
        h_new = h_new @ p.weight_hr.t()  # torch's proj_size: (B, H) -> (B, P)
    if trace is not None:
        trace.update(pre=pre, i=i, f=f, g=g, o=o, c=c_new)
    if spec.gate_recurrence:
        acts = {"i": i, "f": f, "o": o}
        return h_new, c_new, torch.cat([acts[k] for k in spec.recurrent_gates], dim=-1)
    return h_new, c_new


def step(spec: CellSpec, p: CellParams, x_t: torch.Tensor, state: State, truncate: bool | None = None) -> State:
    """The state map s_t = F(x_t, s_{t-1}) for one step.

    Args:
        spec: the cell.
        p: its parameters (one layer, one direction).
        x_t: (B, I) input at step t.
        state: tuple in spec.state_names order: h (B, P), the others (B, width*H).
        truncate: the 1997 truncated gradient; None takes the cell's default.
    Returns:
        the new state, same structure.
    """
    truncate = spec.truncate if truncate is None else truncate
    return pointwise(spec, p, input_projection(p, x_t), state, truncate)


def zero_state(spec: CellSpec, batch: int, hidden: int, like: torch.Tensor, proj_size: int = 0) -> State:
    """The default initial state: h (batch, proj_size or hidden), the others (batch,
    width*hidden), each filled with spec.initial_value(name): zeros, and slstm's m = -inf."""
    width = lambda n: proj_size if n == "h" and proj_size else spec.state_width(n) * hidden
    return tuple(like.new_full((batch, width(n)), spec.initial_value(n)) for n in spec.state_names)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of x (T, B, ...) within its own length; padding stays put."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    L = lengths.to(x.device).unsqueeze(0)  # (1, B)
    idx = torch.where(t < L, L - 1 - t, t)  # (T, B)
    return x.gather(0, idx.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x))


def mask_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """x (T, B, ...) with 0 at every padded step (t >= lengths[b]), by torch.where: a NaN or
    inf there reaches neither the weights' gradients (the input projection runs over every
    row, and a padded row's zero gradient times NaN is NaN) nor anything else, as in
    torch's packed sequences, where padding is not there at all; its gradient is 0."""
    if lengths is None:
        return x
    t = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    valid = (t < lengths.to(x.device).unsqueeze(0)).view(*x.shape[:2], *([1] * (x.dim() - 2)))
    return torch.where(valid, x, 0.0)


def run_layer(
    spec: CellSpec,
    p: CellParams,
    x: torch.Tensor,
    state: State,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    truncate: bool | None = None,
    return_cells: bool = False,
    probe=None,
):
    """Run one layer and direction over a sequence.

    Args:
        x: (T, B, I). state: initial state (tuple: h (B, P), the others (B, width*H)).
        lengths: (B,) int64 valid lengths, or None when all are T. Past its length a
            sequence's state is held and its output is zero, as torch does for packed input.
        reverse: run each sequence backwards within its length (second direction).
        truncate: the 1997 truncated gradient; None takes the cell's default.
        return_cells: also return every step's cell state (LSTM cells).
        probe: if given, called as probe(t, previous_state, new_state, trace) at every
            step (t in processing order), trace holding the step's pre-activations and
            activations (with lengths: of the rows still running at t, in batch order); the
            instruments in lstmlab.analysis read the run through it.
    Returns:
        output (T, B, P), final state tuple, and cells (T, B, H) or None.
    """
    truncate = spec.truncate if truncate is None else truncate
    if reverse:
        x = reverse_padded(x, lengths)
    x = mask_padding(x, lengths)
    # (T, B, G*H): one matrix product for all steps, split into steps by unbind, whose
    # backward stacks the steps' gradients once (indexing xw[t] would add a full-size zero
    # gradient per step, O(T^2) in the backward)
    xw = input_projection(p, x).unbind(0)
    T = x.shape[0]
    valid = None
    if lengths is not None:
        valid = (torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device)).unsqueeze(-1)
    outs, cells = [], []
    for t in range(T):
        trace = {} if probe is not None else None
        if valid is None:
            new = pointwise(spec, p, xw[t], state, truncate, trace)
        else:
            # Only the rows still running step, as in torch's packed sequences: the others
            # hold their state, and nothing (not even a NaN times a zero gradient) flows from
            # their padding into the state, the input or the weights.
            rows = valid[t, :, 0].nonzero().squeeze(1)
            ran = pointwise(spec, p, xw[t][rows], tuple(s[rows] for s in state), truncate, trace)
            new = tuple(s.index_copy(0, rows, n) for s, n in zip(state, ran))
            if spec.kind == "slstm":  # a held row's m is a constant too, as every stepped row's is
                new = (*new[:3], new[3].detach())
        if probe is not None:
            probe(t, state, new, trace)
        state = new
        # padding is 0 as in torch's packed output, also where the held state is not finite
        outs.append(state[0] if valid is None else torch.where(valid[t], state[0], 0.0))
        if return_cells:
            cells.append(state[1] if valid is None else torch.where(valid[t], state[1], 0.0))
    out = torch.stack(outs)
    cell_seq = torch.stack(cells) if return_cells else None
    if reverse:
        out = reverse_padded(out, lengths)
        cell_seq = reverse_padded(cell_seq, lengths) if return_cells else None
    return out, state, cell_seq


def available() -> tuple[bool, str]:
    return True, "plain PyTorch, always available"


def supports(spec: CellSpec) -> tuple[bool, str]:
    """Always (True, ""): the reference backend is the specification of every cell."""
    return True, ""
