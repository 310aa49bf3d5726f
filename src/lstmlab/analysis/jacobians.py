"""Jacobians of the state map s_t = F(x_t, s_{t-1}), in closed form from the cell definition.

The state is s = h for rnn-* and gru, s = [h, c] for the LSTM cells and [h, c, a] for FGR
(a: the previous gate activations), so S = H * (number of state blocks). The Jacobian is
the one the backward pass actually uses: with the truncated rule the gates and the cell
input do not depend on the previous state, and only the Constant Error Carousel remains.

All steps and batch elements are done at once: the derivative of every intermediate with
respect to s_{t-1} is a (N, H, S) tensor (N = T*B), built by the chain rule through the
pointwise maths of `lstmlab.backends.reference`; no autograd, no per-step loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.reference import CellParams
from ..cells import ACTIVATIONS, CellSpec


@dataclass
class Run:
    """What the forward pass of one layer and direction left behind, stacked over time.

    prev: the state entering each step, tuple of (T, B, width*H) in spec.state_names order.
    trace: the pointwise intermediates of each step, each (T, B, H) (dicts for "pre").
    """

    spec: CellSpec
    params: CellParams
    truncate: bool
    prev: tuple[torch.Tensor, ...]
    trace: dict


def _stack(items):
    if isinstance(items[0], dict):
        return {k: _stack([d[k] for d in items]) for k in items[0]}
    return torch.stack(items)


def record(model, x, hx=None, layer: int = 0, direction: int = 0) -> Run:
    """Run `model` (a lstmlab.Recurrent) on x without gradients and keep what one layer
    and direction computed at every step. x: as model.forward takes it (not packed)."""
    if not (0 <= layer < model.num_layers and 0 <= direction < model.num_directions):
        raise ValueError(f"layer={layer}, direction={direction} is invalid; the model has "
                         f"{model.num_layers} layers and {model.num_directions} directions")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a padded Tensor for the analysis, got {type(x).__name__}")
    prev, traces = [], []

    def probe(k, d, t, old, new, trace):
        if (k, d) == (layer, direction):
            prev.append(old)
            traces.append(trace)

    with torch.no_grad():
        model.run(x, hx, probe=probe)
    return Run(model.spec, model.cell_params(layer, direction), model.truncate,
               tuple(torch.stack(s) for s in zip(*prev)), _stack(traces))


def step_jacobians(model, x, hx=None, layer: int = 0, direction: int = 0) -> torch.Tensor:
    """d s_t / d s_{t-1} for every step and batch element, as backprop uses it.

    Args:
        model: a lstmlab.Recurrent. x: its input (T, B, I), or (B, T, I) if batch_first.
        hx: initial state as forward() takes it. layer, direction: which layer to analyse
            (its input is the output of the layers below).
    Returns:
        (T, B, S, S) with S = H * len(state blocks); row and column blocks in the order
        h, c[, a]. J[t] maps s_{t-1} (the state before step t) to s_t.
    """
    return jacobians_from_run(record(model, x, hx, layer, direction))


def jacobians_from_run(run: Run) -> torch.Tensor:
    spec, p = run.spec, run.params
    with torch.no_grad():
        if spec.kind == "rnn":
            return _rnn(spec, p, run.trace)
        if spec.kind == "gru":
            return _gru(p, run.prev, run.trace)
        return _lstm(spec, p, run.prev, run.trace, run.truncate)


def _col(v):
    return v.unsqueeze(-1)  # (..., H) -> (..., H, 1): scales the rows of a Jacobian


def _diag(v):
    return torch.diag_embed(v)


def _rnn(spec, p, tr):
    return _col(ACTIVATIONS[spec.activation].grad(tr["pre"])) * p.weight_hh  # (T, B, H, H)


def _gru(p, prev, tr):
    h = prev[0]
    R_r, R_z, R_n = p.weight_hh.chunk(3, dim=0)
    r, z, n = tr["r"], tr["z"], tr["n"]
    dr = _col(r * (1 - r)) * R_r
    dz = _col(z * (1 - z)) * R_z
    dn = _col(1 - n ** 2) * (_col(tr["hw_n"]) * dr + _col(r) * R_n)
    return _col(h - n) * dz + _col(1 - z) * dn + _diag(z)


def _lstm(spec, p, prev, tr, truncate):
    c_prev = prev[1]
    T, B, H = c_prev.shape
    A = len(spec.recurrent_gates)
    S = H * (2 + A)
    dt = c_prev.dtype
    # d pre_g / d s_{t-1} for each gate: the same (H, S) matrix at every step (R_g, the
    # peephole diagonal on c for i and f, FGR's rows on a), all zero when truncated.
    R = dict(zip(spec.gates, p.weight_hh.chunk(len(spec.gates), dim=0)))
    peep = dict(zip(spec.peephole_gates, p.weight_ch.chunk(len(spec.peephole_gates)))) if spec.peepholes else {}
    fgr = dict(zip(spec.recurrent_gates, p.weight_gg.chunk(A, dim=0))) if A else {}

    def dpre(g):
        M = torch.zeros(H, S, dtype=dt, device=c_prev.device)
        if not truncate:
            M[:, :H] = R[g]
            if g in peep and g != "o":
                M[:, H:2 * H] = torch.diag(peep[g])
            if g in fgr:
                M[:, 2 * H:] = fgr[g]
        return M

    i, f, g, o, c = tr["i"], tr["f"], tr["g"], tr["o"], tr["c"]
    zero = None
    dI = _col(i * (1 - i)) * dpre("i") if spec.input_gate else zero
    dF = {"free": lambda: _col(f * (1 - f)) * dpre("f"), "coupled": lambda: -dI,
          "none": lambda: zero}[spec.forget_gate]()
    dG = _col(ACTIVATIONS[spec.activation].grad(tr["pre"]["g"])) * dpre("g")
    dC = _col(i) * dG  # (T, B, H, S)
    if dI is not None:
        dC = dC + _col(g) * dI
    if dF is not None:
        dC = dC + _col(c_prev) * dF
    dC[..., H:2 * H] += _diag(f)  # the Constant Error Carousel: d c_t / d c_{t-1} = f
    if spec.output_gate:
        Mo = dpre("o")
        dpre_o = Mo + _col(peep["o"]) * dC if ("o" in peep and not truncate) else Mo
        dO = _col(o * (1 - o)) * dpre_o
    else:
        dO = None
    act = ACTIVATIONS[spec.output_activation]
    dH = _col(o * act.grad(c)) * dC
    if dO is not None:
        dH = dH + _col(act.fn(c)) * dO
    rows = [dH, dC] + [{"i": dI, "f": dF, "o": dO}[k] for k in spec.recurrent_gates]
    return torch.cat(rows, dim=-2)  # (T, B, S, S)


def cell_path(run: Run) -> torch.Tensor | None:
    """The diagonal of the c -> c block along the Constant Error Carousel alone: the
    forget-gate activations f_t, (T, B, H). None for cells without a cell state."""
    return run.trace["f"] if run.spec.kind == "lstm" else None
