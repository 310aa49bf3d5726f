"""The gradient-flow study: RNNs against LSTMs (and the modern cells: sLSTM, minLSTM,
minGRU), in numbers (flow.json), figures and a report.

For every cell: a freshly initialised network of `hidden` units is driven by Gaussian
input for `steps` steps (float64, so that vanishing gradients are measured rather than
flushed to zero). A loss on the last step only, L = <u, h_T> with u a random unit vector
per sequence, is backpropagated; ||dL/dh_t|| / ||dL/dh_T|| as a function of the lag T - t
is how much error from the end reaches step t. Beside it: the exact step Jacobians, the
norms of their products over every lag, the share of the c -> c product carried by the
cell-state path (lstm and slstm kinds), and the Lyapunov spectrum of the backward dynamics
with the memory horizon it implies. Every cell's mean diagonal carry (the forget gate f,
slstm's stabilised f', minlstm's f' = f / (f + i), mingru's 1 - z) is recorded beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..cells import get_cell
from ..layer import INITS, Recurrent
from .flow import gradient_flow
from .jacobians import check_closed_form, jacobians_from_run, record
from .lag import by_lag, lag_jacobians
from .lyapunov import lyapunov_from_jacobians

# the classic cells, then the modern ones (issue #13)
DEFAULT_CELLS = ("rnn-tanh", "rnn-sigmoid", "rnn-relu", "lstm1997", "lstm", "vanilla", "gru")
DEFAULT_CELLS += ("slstm", "minlstm", "mingru")


@dataclass(frozen=True)
class FlowConfig:
    cells: tuple[str, ...] = DEFAULT_CELLS
    steps: int = 200  # T: the longest lag measured
    hidden: int = 64  # H
    input_size: int = 1
    batch: int = 8  # sequences averaged over
    seed: int = 0
    forget_bias: float | None = None  # for cells with a free forget gate; None: as init
    init: str = "torch"  # "torch" or "1997" (see lstmlab.Recurrent)
    heatmap_stride: int = 5  # lag products kept every this many steps (cost ~ T^2/stride); slstm: twice this
    heatmap_batch: int = 2  # sequences the heatmaps and cell-path share average over
    warmup: int | None = None  # backward steps not counted in the Lyapunov exponents; None: min(10, steps // 2)
    threshold: float = 1e-6  # the gradient falls below this: the empirical horizon
    forget_biases: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0)  # the lstm sweep; () for none
    # the lstm again with these forget biases, beside the cells in every figure ("lstm, forget bias 1")
    lstm_forget_biases: tuple[float, ...] = (1.0, 2.0)

    def __post_init__(self):
        for name in ("steps", "hidden", "input_size", "batch", "heatmap_stride", "heatmap_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is invalid; allowed: an int >= 1")
        if not self.cells:
            raise ValueError("cells is empty; allowed: one or more of lstmlab.cell_names()")
        for c in self.cells:
            check_closed_form(get_cell(c))  # get_cell raises with the list of valid cells
        for name in ("forget_biases", "lstm_forget_biases"):
            v = getattr(self, name)
            if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in v):
                raise ValueError(f"{name}={v!r} is invalid; allowed: a tuple of finite numbers")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is invalid; allowed: {INITS}")
        if self.warmup is None:  # derived, so that a short --steps works too
            object.__setattr__(self, "warmup", min(10, self.steps // 2))
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup={self.warmup!r} is invalid; allowed: 0 <= warmup < steps={self.steps}")


GROWTH_TOL = 1e-9  # |lambda_1| below this: neither decays nor grows (the 1997 carousel)


def variant_name(forget_bias: float) -> str:
    """The study's name for the lstm with a given forget bias."""
    return f"lstm, forget bias {forget_bias:g}"


def lyapunov_status(top: float) -> str:
    """ "decays", "growing" or "constant" by the sign of the top Lyapunov exponent."""
    return "decays" if top < -GROWTH_TOL else "growing" if top > GROWTH_TOL else "constant"


def measured_status(grad_by_lag, threshold: float) -> str:
    """ "below_threshold": the measured gradient fell below threshold within the lags measured;
    "growing": it never did and is larger at the longest lag than at lag 0;
    "never_below_threshold": it never did and did not grow (flat, or decaying too slowly)."""
    if any(v < threshold for v in grad_by_lag):
        return "below_threshold"
    return "growing" if grad_by_lag[-1] > grad_by_lag[0] else "never_below_threshold"


def _first_below(values: torch.Tensor, threshold: float):
    idx = torch.nonzero(values < threshold)
    return int(idx[0]) if len(idx) else None


def _fit_rate(log_norm: torch.Tensor) -> float | None:
    """Least-squares slope of ln ||dL/dh|| against lag, over the lags where it is finite and
    above 1e-250: the empirical decay rate per step (positive = decays)."""
    lags = torch.arange(len(log_norm), dtype=torch.float64)
    ok = torch.isfinite(log_norm) & (log_norm > math.log(1e-250))
    if ok.sum() < 2:
        return None
    x, y = lags[ok], log_norm[ok]
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return -float(slope)


def study_cell(cell: str, cfg: FlowConfig, forget_bias: float | None = None) -> dict:
    """All measurements for one cell (plain lists and numbers, ready for JSON).
    forget_bias: overrides cfg.forget_bias (cells with a free forget gate)."""
    torch.manual_seed(cfg.seed)
    spec = get_cell(cell)
    fb = (cfg.forget_bias if forget_bias is None else forget_bias) if spec.forget_gate == "free" else None
    model = Recurrent(cfg.input_size, cfg.hidden, cell=cell, dtype=torch.float64, init=cfg.init, forget_bias=fb)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    x = torch.randn(cfg.steps, cfg.batch, cfg.input_size, generator=g, dtype=torch.float64)
    u = torch.randn(cfg.batch, cfg.hidden, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    t0 = time.perf_counter()

    # 1. the gradient of a loss at the last step, at every earlier step: the norm over the
    #    whole state s_t = [h_t, c_t] (with the truncated rule error lives in c alone;
    #    slstm: [h_t, c_t, n_t], the state its step Jacobians act on)
    gf = gradient_flow(model, x, lambda out: (out[-1] * u).sum())
    state = torch.sqrt(sum(v**2 for v in (gf.h, gf.c, gf.n) if v is not None))
    by_lag_of = lambda v: torch.log((v / state[-1]).clamp_min(1e-300)).mean(1).flip(0)
    log_rel = by_lag_of(state)  # lag 0..T-1, geometric mean over the batch
    grad_by_lag = torch.exp(log_rel)
    out = {
        "cell": cell,
        "summary": spec.summary,
        "state": list(spec.state_names),
        "truncate": model.truncate,
        "forget_bias": fb,
        "parameters": sum(p.numel() for p in model.parameters()),
        "grad_by_lag": grad_by_lag.tolist(),
        "decay_rate_fit": _fit_rate(log_rel),
        "horizon_empirical": _first_below(grad_by_lag, cfg.threshold),
        "measured_status": measured_status(grad_by_lag.tolist(), cfg.threshold),
    }
    if gf.c is not None:
        out["grad_h_by_lag"] = torch.exp(by_lag_of(gf.h)).tolist()
        out["grad_c_by_lag"] = torch.exp(by_lag_of(gf.c)).tolist()
    if gf.n is not None:
        out["grad_n_by_lag"] = torch.exp(by_lag_of(gf.n)).tolist()

    # 2. exact step Jacobians, and the Lyapunov spectrum of their backward product
    run = record(model, x)
    J = jacobians_from_run(run)
    lyap = lyapunov_from_jacobians(J, warmup=cfg.warmup)
    out["lyapunov"] = lyap.mean.tolist()
    out["lyapunov_top"] = float(lyap.mean[0])
    out["decay_rate"] = lyap.decay_rate
    out["horizon_e"] = lyap.horizon_e
    out["horizon_1e-6"] = lyap.horizon_1e6
    out["lyapunov_status"] = lyapunov_status(out["lyapunov_top"])
    one_step = torch.linalg.matrix_norm(J, ord=2)
    out["step_jacobian_spectral_mean"] = float(one_step.mean())

    # 3. the diagonal carries; lag products: heatmap of log10 spectral norms; cell-path share by lag
    carry = diagonal_carry(spec, run)
    if carry is not None:
        out["carry_mean"] = float(carry.mean())
        # the top exponent of the diagonal alone: max over units of the mean log carry, from the
        # second step (slstm's first forgets its initial state: f'_1 = 0); for the min cells,
        # whose Jacobians are that diagonal, the top Lyapunov exponent over the same steps
        out["carry_log_top"] = float(torch.log(carry[1:]).mean(0).amax(-1).mean())
    if spec.kind == "lstm":
        out["forget_gate_mean"] = float(run.trace["f"].mean())
    if spec.kind == "slstm":
        # what h = o c / n sees: c / n carried with f' n_{t-1} / n_t (lstmlab.theory.slstm_ratio_factor)
        ratio = run.trace["f"] * run.prev[2] / run.trace["n"]
        out["ratio_carry_mean"] = float(ratio.mean())
        out["ratio_carry_log_top"] = float(torch.log(ratio[1:]).mean(0).amax(-1).mean())
    nb = min(cfg.heatmap_batch, cfg.batch)
    forget = run.trace["f"][:, :nb] if spec.kind in ("lstm", "slstm") else None
    # slstm's state [h, c, n] is 3H wide: its lag products cost (3/2)^3 times the lstm's, and
    # the heatmap is kept at twice the stride (a quarter of the products' norms). Its first
    # step forgets the initial state by design (m_0 = -inf: f'_1 = 0, a zero carousel), so its
    # lag products start from s_1
    stride, first = (2 * cfg.heatmap_stride, 1) if spec.kind == "slstm" else (cfg.heatmap_stride, 0)
    lag = lag_jacobians(J[first:, :nb], None if forget is None else forget[first:], stride=stride)
    lag.starts, lag.ends = lag.starts + first, lag.ends + first
    heat = torch.log10(lag.spectral.clamp_min(1e-300)).nanmean(0)
    out["heatmap"] = {
        "stride": stride,
        "starts": lag.starts.tolist(),
        "ends": lag.ends.tolist(),
        "log10_spectral": [[v if math.isfinite(v) else None for v in row] for row in heat.tolist()],
    }
    lags, mean_log = by_lag(lag.spectral, lag.starts, lag.ends)
    out["lag_norm"] = {"lags": lags.tolist(), "log10_spectral": mean_log.tolist()}
    if lag.cell_share is not None:
        share_lags, _ = by_lag(lag.cell_share, lag.starts, lag.ends)
        L = lag.ends.unsqueeze(0) - lag.starts.unsqueeze(1)
        out["cell_path"] = {
            "lags": share_lags.tolist(),
            "share": [float(lag.cell_share[:, L == k].nanmean()) for k in share_lags],
            "log10_cell_spectral": by_lag(lag.cell_spectral, lag.starts, lag.ends)[1].tolist(),
        }
    out["seconds"] = time.perf_counter() - t0
    return out


def diagonal_carry(spec, run) -> torch.Tensor | None:
    """(T, B, H): the gate that carries each cell's memory from step to step, the diagonal of
    its step Jacobian along that state: lstm kinds f (1 without a forget gate), slstm the
    stabilised f' (of c and n), minlstm f' = f / (f + i), mingru 1 - z (the whole Jacobian).
    None for rnn and gru, whose h has no gated self-connection of its own."""
    if spec.kind in ("lstm", "slstm", "minlstm"):
        return run.trace["f"]
    if spec.kind == "mingru":
        return 1 - run.trace["z"]
    return None


def forget_bias_sweep(cfg: FlowConfig, cell: str = "lstm") -> dict:
    """The top Lyapunov exponent of `cell` against its forget-gate bias b, beside the
    closed form log sigma(b) of the 1-D picture (recurrent weights ignored)."""
    from ..theory import lstm_factor

    rows = []
    for b in cfg.forget_biases:
        torch.manual_seed(cfg.seed)
        model = Recurrent(cfg.input_size, cfg.hidden, cell=cell, dtype=torch.float64, init=cfg.init, forget_bias=b)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        x = torch.randn(cfg.steps, cfg.batch, cfg.input_size, generator=g, dtype=torch.float64)
        run = record(model, x)
        # the full spectrum, as study_cell computes it: with finite T the top-1 estimate differs
        lyap = lyapunov_from_jacobians(jacobians_from_run(run), warmup=cfg.warmup)
        # the cell-state path alone is diagonal: its top exponent is max_j mean_t log f_tj
        cec = float(torch.log(run.trace["f"]).mean(0).amax(-1).mean())
        rows.append(
            {
                "forget_bias": b,
                "lyapunov_top": float(lyap.mean[0]),
                "cell_path_top": cec,
                "theory_log_sigma": math.log(lstm_factor(b)),
                "horizon_1e-6": lyap.horizon_1e6,
                "lyapunov_status": lyapunov_status(float(lyap.mean[0])),
            }
        )
    return {"cell": cell, "rows": rows}


def run_study(cfg: FlowConfig, progress=print) -> dict:
    results = {"config": asdict(cfg), "torch": torch.__version__, "cells": {}}
    entries = [(cell, cell, None) for cell in cfg.cells]
    entries += [(variant_name(b), "lstm", b) for b in cfg.lstm_forget_biases]
    for name, cell, fb in entries:
        r = study_cell(cell, cfg, fb)
        if fb is not None:
            r["summary"] += f"; forget-gate bias {fb:g} at initialisation"
        results["cells"][name] = r
        measured = r["horizon_empirical"]
        hz = {"growing": "growing", "constant": "inf"}.get(r["lyapunov_status"], f"{r['horizon_1e-6']:.1f}")
        seen = {"growing": "growing", "never_below_threshold": f">{cfg.steps - 1}"}.get(r["measured_status"], measured)
        progress(
            f"  {name:20s} decay/step {r['decay_rate'] + 0.0:+.4f}  horizon(1e-6) {hz:>7}  measured {seen:>7}"
            f"  ({r['seconds']:.1f}s)"
        )
    if cfg.forget_biases:
        results["forget_bias_sweep"] = forget_bias_sweep(cfg)
        for row in results["forget_bias_sweep"]["rows"]:
            progress(
                f"  lstm forget bias {row['forget_bias']:4.1f}: top exponent "
                f"{row['lyapunov_top']:+.4f}, cell path alone {row['cell_path_top']:+.4f}, "
                f"1-D theory log sigma(b) {row['theory_log_sigma']:+.4f}"
                + (" (growing)" if row["lyapunov_status"] == "growing" else "")
            )
    return results
