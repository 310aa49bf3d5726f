"""Error flow while a network learns: the flow study's instruments on a fixed probe batch,
at checkpoints of a training run (`lstmlab train ... --flow-every N`).

At every probe the recurrent layer (layer 0) of the model is copied in float64 and driven
by the same probe sequences, drawn once from the task with their own seed (sequences
shorter than the longest are run on through their zero padding). As in the flow
study the loss is L = <u, h_T>, a fixed random unit vector u per sequence on the last
step's hidden state, so that what is measured is how far error is carried back through
the recurrence, whatever the readout has learned. Recorded (plain numbers, for JSON):

- ||dL/dh_t||, ||dL/dc_t|| and the whole state's norm against the lag T - t, relative to
  the last step's state norm (geometric mean over the probe batch), as log10;
- the top Lyapunov exponent of the backward dynamics and the memory horizon it implies
  (steps until error falls by `threshold`), with "decays" / "growing" / "constant";
- the measured horizon: the first lag where the gradient is below `threshold`;
- for LSTM cells: histograms of the forget- and input-gate activations over all steps,
  units and the first `jacobian_batch` probe sequences (those the Lyapunov exponent uses);
  the mean forget-gate input v; the share of the c -> c lag Jacobian carried by the
  cell-state path (the carousel) against the lag.

The copy leaves the training model, its gradients and every random stream untouched.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch

from .flow import gradient_flow
from .jacobians import jacobians_from_run, record
from .lag import by_lag, lag_jacobians
from .lyapunov import lyapunov_from_jacobians
from .study import lyapunov_status, measured_status

FLOW_FILE = "flow.json"


@dataclass(frozen=True)
class ProbeConfig:
    batch: int = 8  # probe sequences
    threshold: float = 1e-6  # the gradient falls below this: the horizon
    bins: int = 20  # gate histograms over [0, 1]
    top_k: int = 8  # Lyapunov exponents computed (the top one is kept)
    jacobian_batch: int = 4  # probe sequences the Jacobian measures (Lyapunov, gates, share) use
    share_batch: int = 2  # sequences the cell-path share averages over
    share_stride: int | None = None  # lag products every this many steps; None: about T / 5

    def __post_init__(self):
        for name in ("batch", "bins", "top_k", "jacobian_batch", "share_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is invalid; allowed: an int >= 1")
        if not (isinstance(self.threshold, float) and 0 < self.threshold < 1):
            raise ValueError(f"threshold={self.threshold!r} is invalid; allowed: a float in (0, 1)")


def _log10_list(v: torch.Tensor) -> list[float]:
    return [round(float(x), 4) for x in torch.log10(v.clamp_min(1e-300))]


class FlowProbe:
    """Measures a Recurrent layer's error flow on a fixed probe batch.

    Args:
        inputs: (B, T, I) probe sequences, batch first (the trained model's layout).
        seed: seeds the random unit vectors u of the probe loss.
        config: ProbeConfig.
    """

    def __init__(self, inputs: torch.Tensor, seed: int = 0, config: ProbeConfig = ProbeConfig()):
        if inputs.dim() != 3:
            raise ValueError(f"inputs has shape {tuple(inputs.shape)}; allowed: (B, T, I)")
        self.config = config
        self.x = inputs.detach().to(torch.float64).transpose(0, 1).contiguous()  # (T, B, I)
        self.seed = seed
        self.u = None

    def _unit(self, H: int) -> torch.Tensor:
        if self.u is None or self.u.shape[-1] != H:
            g = torch.Generator().manual_seed(self.seed)
            u = torch.randn(self.x.shape[1], H, generator=g, dtype=torch.float64)
            self.u = u / u.norm(dim=-1, keepdim=True)
        return self.u

    def measure(self, rnn) -> dict:
        """All measurements of the lstmlab.Recurrent `rnn` (layer 0) on the probe batch."""
        t0 = time.perf_counter()
        cfg = self.config
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small matrices: more threads only wait on a busy machine
        try:
            out = self._copy_and_measure(rnn, cfg)
        finally:
            torch.set_num_threads(threads)
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out

    def _copy_and_measure(self, rnn, cfg: ProbeConfig) -> dict:
        with torch.random.fork_rng(devices=[]):
            model = copy.deepcopy(rnn).to(torch.float64)
            model.backend, model.batch_first = "reference", False
            for p in model.parameters():
                p.requires_grad_(True)
            return self._measure(model, cfg)

    def _measure(self, model, cfg: ProbeConfig) -> dict:
        x, T = self.x, self.x.shape[0]
        u = self._unit(model.hidden_size)
        gf = gradient_flow(model, x, lambda out: (out[-1] * u).sum())
        state = torch.sqrt(sum(v**2 for v in (gf.h, gf.c, gf.n) if v is not None))  # (T, B); slstm: h, c, n
        ref = state[-1].clamp_min(1e-300)
        by_lag_of = lambda v: torch.exp(torch.log((v / ref).clamp_min(1e-300)).mean(1).flip(0))
        grad = by_lag_of(state)
        below = torch.nonzero(grad < cfg.threshold)
        out = {
            "grad_log10": _log10_list(grad),
            "horizon_measured": int(below[0]) if len(below) else None,
            "measured_status": measured_status(grad.tolist(), cfg.threshold),
        }
        if gf.c is not None:
            out["grad_h_log10"] = _log10_list(by_lag_of(gf.h))
            out["grad_c_log10"] = _log10_list(by_lag_of(gf.c))

        run = record(model, x[:, : cfg.jacobian_batch])
        J = jacobians_from_run(run)
        lyap = lyapunov_from_jacobians(J, k=min(cfg.top_k, J.shape[-1]), warmup=min(10, T // 2))
        top = float(lyap.mean[0])
        out["lyapunov_top"] = round(top, 6)
        out["lyapunov_status"] = lyapunov_status(top)
        h = lyap.horizon(1 / cfg.threshold)
        out["horizon_lyapunov"] = round(h, 2) if math.isfinite(h) else None

        if model.spec.kind == "lstm":
            edges = torch.linspace(0, 1, cfg.bins + 1, dtype=torch.float64)
            for gate in ("f", "i"):
                a = run.trace[gate].flatten()
                counts = torch.histc(a, bins=cfg.bins, min=0.0, max=1.0)
                out[f"{gate}_hist"] = [round(float(c), 6) for c in counts / a.numel()]
                out[f"{gate}_mean"] = round(float(a.mean()), 6)
            out["hist_edges"] = [round(float(e), 6) for e in edges]
            if "f" in run.trace["pre"]:
                out["f_input_mean"] = round(float(run.trace["pre"]["f"].mean()), 6)
            nb = min(cfg.share_batch, x.shape[1])
            stride = cfg.share_stride or max(1, T // 5)
            lag = lag_jacobians(J[:, :nb], run.trace["f"][:, :nb], stride=stride, spectral=False)
            lags, _ = by_lag(lag.cell_share, lag.starts, lag.ends)
            L = lag.ends.unsqueeze(0) - lag.starts.unsqueeze(1)
            out["cell_share"] = {
                "lags": lags.tolist(),
                "share": [round(float(lag.cell_share[:, L == k].nanmean()), 6) for k in lags],
            }
        return out
