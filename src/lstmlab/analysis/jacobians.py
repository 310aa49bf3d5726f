"""Jacobians of the state map s_t = F(x_t, s_{t-1}), in closed form from the cell definition.

The state is s = h for rnn-*, gru, minlstm and mingru, s = [h, c] for the LSTM cells,
[h, c, a] for FGR (a: the previous gate activations) and [h, c, n] for slstm, so
S = H * (number of state blocks). The Jacobian is the one the backward pass actually
uses: with the truncated rule the gates and the cell input do not depend on the previous
state, and only the Constant Error Carousel remains; slstm's stabiliser m is not a state
that carries error (the reference detaches it: h does not depend on it), so it is held
fixed and left out of s.

All steps and batch elements are done at once, by the chain rule through the pointwise
maths of `lstmlab.backends.reference`; no autograd, no per-step loop. Every derivative of
an intermediate is a sum of fixed matrices (recurrent, peephole, FGR, identity) with
per-step row scalings, so the chain rule runs on (T, B, H) coefficients and the
(T, B, S, S) Jacobian is built once at the end (see `Lin`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.reference import CellParams
from ..cells import ACTIVATIONS, CellSpec
from ..errors import ArgumentError


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
        raise ValueError(
            f"layer={layer}, direction={direction} is invalid; the model has "
            f"{model.num_layers} layers and {model.num_directions} directions"
        )
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a padded Tensor for the analysis, got {type(x).__name__}")
    prev, traces = [], []

    def probe(k, d, t, old, new, trace):
        if (k, d) == (layer, direction):
            prev.append(old)
            traces.append(trace)

    with torch.no_grad():
        model.run(x, hx, probe=probe)
    return Run(
        model.spec,
        model.cell_params(layer, direction),
        model.truncate,
        tuple(torch.stack(s) for s in zip(*prev)),
        _stack(traces),
    )


def step_jacobians(model, x, hx=None, layer: int = 0, direction: int = 0) -> torch.Tensor:
    """d s_t / d s_{t-1} for every step and batch element, as backprop uses it.

    Args:
        model: a lstmlab.Recurrent. x: its input (T, B, I), or (B, T, I) if batch_first.
        hx: initial state as forward() takes it. layer, direction: which layer to analyse
            (its input is the output of the layers below).
    Returns:
        (T, B, S, S) with S = H * len(state blocks); row and column blocks in the order
        h, c[, a] (slstm: h, c, n; m held fixed). J[t] maps s_{t-1} (the state before step t)
        to s_t.
    """
    check_closed_form(model.spec)
    return jacobians_from_run(record(model, x, hx, layer, direction))


# The kinds of cell whose step Jacobians are worked out below: every kind of CellSpec. A
# kind added later is refused here until its formulas are, rather than given another's.
CLOSED_FORM_KINDS = ("rnn", "gru", "lstm", "slstm", "minlstm", "mingru")


def check_closed_form(spec: CellSpec) -> None:
    """Raise ArgumentError if the closed-form Jacobians do not cover this kind of cell."""
    if spec.kind not in CLOSED_FORM_KINDS:
        raise ArgumentError(
            f"cell {spec.name!r} is of kind {spec.kind!r}: the closed-form step Jacobians (and the "
            f"instruments built on them: Lyapunov exponents, lag norms, watch, study) cover the kinds "
            f"{', '.join(CLOSED_FORM_KINDS)} only"
        )


def jacobians_from_run(run: Run) -> torch.Tensor:
    spec, p = run.spec, run.params
    check_closed_form(spec)
    with torch.no_grad():
        if spec.kind == "rnn":
            return _rnn(spec, p, run.trace)
        if spec.kind == "gru":
            return _gru(spec, p, run.prev, run.trace)
        if spec.kind == "slstm":
            return _slstm(spec, p, run.prev, run.trace)
        if spec.kind == "mingru":  # dh_t/dh_{t-1} = diag(1 - z_t): z sees x_t alone
            return torch.diag_embed(1 - run.trace["z"])
        if spec.kind == "minlstm":  # diag(f'_t), f' = f / (f + i) of x_t alone
            return torch.diag_embed(run.trace["f"])
        return _lstm(spec, p, run.prev, run.trace, run.truncate)


class Lin:
    """The derivative of a (T, B, H) quantity with respect to s_{t-1}, kept symbolically as
    sum_k diag(coef_k) M_k: coef_k (T, B, H) per step, M_k a fixed (H, S) matrix (a
    recurrent matrix, a peephole diagonal, FGR's rows, or a block of the identity). Row
    scalings and sums act on the coefficients only; `materialize` builds the (T, B, H, S)
    Jacobian once, with one contraction."""

    def __init__(self, terms: dict):
        self.terms = terms  # name -> coef

    def scale(self, v: torch.Tensor) -> Lin:
        return Lin({k: c * v for k, c in self.terms.items()})

    def __add__(self, other: Lin) -> Lin:
        terms = dict(self.terms)
        for k, c in other.terms.items():
            terms[k] = terms[k] + c if k in terms else c
        return Lin(terms)

    def __neg__(self) -> Lin:
        return Lin({k: -c for k, c in self.terms.items()})


def materialize(rows: list[Lin], mats: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Stack row blocks of Lin derivatives into the (T, B, S, S) Jacobian. `mats` maps a
    term name to its (H, S) matrix; a name ("eye", offset) is the identity on the block of
    columns starting at offset (added on the diagonal, no matrix product).

    One contraction over every row q of J at once, sum_k coef[t, b, q, k] M_k[q mod H, :],
    written straight into the result (no zero fill, no copy): the returned tensor is a
    strided view (rows outermost in memory), which every torch op accepts as it is.
    """
    T, B, H = like.shape
    R = len(rows)
    names = sorted({k for lin in rows for k in lin.terms if not isinstance(k, tuple)})
    if names:
        zero = like.new_zeros(())
        coef = torch.stack(
            [torch.cat([lin.terms.get(k, zero).expand(T, B, H) for lin in rows], -1) for k in names], -1
        )  # (T, B, R*H, K)
        M = torch.stack([mats[k].repeat(R, 1) for k in names])  # (K, R*H, S)
        out = torch.einsum("tbqk,kqs->tbqs", coef, M)
    else:  # the truncated rule: nothing but the carousel's diagonal
        out = like.new_zeros(T, B, R * H, next(iter(mats.values())).shape[1])
    idx = torch.arange(H, device=like.device)
    for r, lin in enumerate(rows):
        for k, c in lin.terms.items():
            if isinstance(k, tuple):  # ("eye", offset): a diagonal on that column block
                out[:, :, r * H + idx, k[1] + idx] += c
    return out


def _rnn(spec, p, tr):
    d = Lin({"R": ACTIVATIONS[spec.activation].grad(tr["pre"])})
    return materialize([d], {"R": p.weight_hh}, tr["pre"])


def _gru(spec, p, prev, tr):
    h = prev[0]
    R = dict(zip(spec.gates, p.weight_hh.chunk(len(spec.gates), dim=0)))
    r, z, n = tr["r"], tr["z"], tr["n"]
    dr = Lin({"r": r * (1 - r)})
    dz = Lin({"z": z * (1 - z)})
    dn = (dr.scale(tr["hw_n"]) + Lin({"n": r})).scale(1 - n**2)
    dh = dz.scale(h - n) + dn.scale(1 - z) + Lin({("eye", 0): z})
    return materialize([dh], R, h)


def _lstm(spec, p, prev, tr, truncate):
    c_prev = prev[1]
    H = c_prev.shape[-1]
    A = len(spec.recurrent_gates)
    S = H * (2 + A)
    # d pre_g / d s_{t-1} for each gate: one fixed (H, S) matrix (R_g on h, the peephole
    # diagonal on c for i and f, FGR's rows on a); nothing at all when truncated.
    R = dict(zip(spec.gates, p.weight_hh.chunk(len(spec.gates), dim=0)))
    peep = dict(zip(spec.peephole_gates, p.weight_ch.chunk(len(spec.peephole_gates)))) if spec.peepholes else {}
    fgr = dict(zip(spec.recurrent_gates, p.weight_gg.chunk(A, dim=0))) if A else {}
    mats = {}
    for g in spec.gates:
        M = c_prev.new_zeros(H, S)
        M[:, :H] = R[g]
        if g in peep and g != "o":
            M[:, H : 2 * H] = torch.diag(peep[g])
        if g in fgr:
            M[:, 2 * H :] = fgr[g]
        mats[g] = M
    ones = torch.ones_like(c_prev)
    dpre = (lambda g: Lin({})) if truncate else (lambda g: Lin({g: ones}))

    i, f, g, o, c = tr["i"], tr["f"], tr["g"], tr["o"], tr["c"]
    dI = dpre("i").scale(i * (1 - i)) if spec.input_gate else Lin({})
    dF = {"free": lambda: dpre("f").scale(f * (1 - f)), "coupled": lambda: -dI, "none": lambda: Lin({})}[
        spec.forget_gate
    ]()
    dG = dpre("g").scale(ACTIVATIONS[spec.activation].grad(tr["pre"]["g"]))
    # the Constant Error Carousel: d c_t / d c_{t-1} = f on the diagonal
    dC = dG.scale(i) + dI.scale(g) + dF.scale(c_prev) + Lin({("eye", H): f})
    dO = Lin({})
    if spec.output_gate:
        dpre_o = dpre("o")
        if "o" in peep and not truncate:
            dpre_o = dpre_o + dC.scale(peep["o"])
        dO = dpre_o.scale(o * (1 - o))
    act = ACTIVATIONS[spec.output_activation]
    dH = dC.scale(o * act.grad(c)) + dO.scale(act.fn(c))
    rows = [dH, dC] + [{"i": dI, "f": dF, "o": dO}[k] for k in spec.recurrent_gates]
    return materialize(rows, mats, c_prev)


def dense_recurrent(spec: CellSpec, p: CellParams) -> torch.Tensor:
    """slstm's weight_hh (G*H, H // heads), block-diagonal over heads and stored compressed,
    as the full (G*H, H) matrix that multiplies h_{t-1} (reference.recurrent_product)."""
    G = len(spec.gates)
    GH, dh = p.weight_hh.shape
    H = GH // G
    blocks = p.weight_hh.view(G, H // dh, dh, dh)  # (G, heads, dh out, dh in)
    return torch.cat([torch.block_diag(*blocks[g]) for g in range(G)])


def _slstm(spec, p, prev, tr):
    """sLSTM over s = [h, c, n] with the stabiliser m held fixed (as the reference's
    backward holds it: m is detached). With pre-activations k_g = W_g x + R_g h_{t-1} + b_g:
    i' = exp(k_i - m_t), f' = exp(log f + m_{t-1} - m_t) (log f = logsigmoid(k_f), or k_f
    for the exponential forget gate), so d i' = i' d k_i and d f' = f' (d log f / d k_f) d k_f;
    c_t = f' c_{t-1} + i' z, n_t = f' n_{t-1} + i', h_t = o c_t / n_t."""
    _, c_prev, n_prev = prev[:3]
    H = c_prev.shape[-1]
    R = dict(zip(spec.gates, dense_recurrent(spec, p).chunk(len(spec.gates), dim=0)))
    mats = {g: torch.cat([R[g], c_prev.new_zeros(H, 2 * H)], 1) for g in spec.gates}  # (H, 3H): h only
    i, f, z, o, c, n = tr["i"], tr["f"], tr["z"], tr["o"], tr["c"], tr["n"]
    k_f = tr["pre"]["f"]
    dlog_f = torch.sigmoid(-k_f) if spec.forget_activation == "sigmoid" else torch.ones_like(k_f)
    dI = Lin({"i": i})
    dF = Lin({"f": f * dlog_f})
    dZ = Lin({"z": 1 - z**2})
    dO = Lin({"o": o * (1 - o)})
    dC = dF.scale(c_prev) + dI.scale(z) + dZ.scale(i) + Lin({("eye", H): f})
    dN = dF.scale(n_prev) + dI + Lin({("eye", 2 * H): f})
    dH = dO.scale(c / n) + dC.scale(o / n) + dN.scale(-o * c / n**2)
    return materialize([dH, dC, dN], mats, c_prev)
