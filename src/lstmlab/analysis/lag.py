"""Lag Jacobians: the products d s_t' / d s_t = J_t' ... J_{t+1} over every lag, their
norms, and for the LSTM cells the part carried by the cell-state path alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LagNorms:
    """Norms of d s_t' / d s_t for state indices t in `starts`, t' in `ends` (s_0 is the
    initial state, s_T the last). Entries with t' <= t are NaN. Shapes (B, n_starts, n_ends).

    cell_*: for LSTM cells, the norm of the cell-state path alone, prod_k diag(f_k): the
    product of the diagonal c -> c blocks (the forget gates). cell_share: the share of the
    c -> c block of the full product carried by that path,
    ||P_cell||_F / (||P_cell||_F + ||P_cc - P_cell||_F), in [0, 1]; 1 when the CEC is the
    only path (the truncated gradient).
    """

    starts: torch.Tensor
    ends: torch.Tensor
    spectral: torch.Tensor | None
    frobenius: torch.Tensor
    cell_spectral: torch.Tensor | None = None
    cell_frobenius: torch.Tensor | None = None
    cell_share: torch.Tensor | None = None


def lag_jacobians(
    J: torch.Tensor, forget: torch.Tensor | None = None, stride: int = 1, spectral: bool = True
) -> LagNorms:
    """Norms of all lag products of the step Jacobians.

    Args:
        J: (T, B, S, S) step Jacobians (lstmlab.analysis.step_jacobians); J[k] maps s_k to s_{k+1}.
        forget: (T, B, H) forget-gate activations for the cell-path product (LSTM cells;
            slstm: its stabilised f', the diagonal of dc_t/dc_{t-1} with m fixed; the
            state's second block is c), or None.
        stride: keep every stride-th start and end (the cost is O(T^2 / stride) products).
        spectral: also compute spectral norms (one SVD per kept product).
    """
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride={stride!r} is invalid; allowed: an int >= 1")
    T, B, S, _ = J.shape
    starts = torch.arange(0, T, stride)
    ends = torch.tensor(sorted(set(range(stride, T + 1, stride)) | {T}))
    n_s, n_e = len(starts), len(ends)
    nan = torch.full((B, n_s, n_e), float("nan"), dtype=J.dtype)
    fro, spec = nan.clone(), nan.clone() if spectral else None
    P = torch.eye(S, dtype=J.dtype).expand(B, n_s, S, S).clone()
    cell = None
    if forget is not None:
        H = forget.shape[-1]
        cell = torch.ones(B, n_s, H, dtype=J.dtype)
        cfro, cspec, share = nan.clone(), nan.clone(), nan.clone()
    end_col = {int(e): j for j, e in enumerate(ends)}
    with torch.no_grad():
        for k in range(T):
            active = int((starts <= k).sum())  # starts are sorted: the first `active` ones
            P[:, :active] = J[k].unsqueeze(1) @ P[:, :active]
            if cell is not None:
                cell[:, :active] *= forget[k].unsqueeze(1)
            j = end_col.get(k + 1)
            if j is None:
                continue
            Pa = P[:, :active]
            fro[:, :active, j] = torch.linalg.matrix_norm(Pa)
            if spectral:
                spec[:, :active, j] = torch.linalg.matrix_norm(Pa, ord=2)
            if cell is not None:
                ca = cell[:, :active]
                cpath = ca.norm(dim=-1)
                cfro[:, :active, j] = cpath
                cspec[:, :active, j] = ca.abs().amax(dim=-1)
                rest = torch.linalg.matrix_norm(Pa[..., H : 2 * H, H : 2 * H] - torch.diag_embed(ca))
                share[:, :active, j] = cpath / (cpath + rest)
    out = LagNorms(starts, ends, spec, fro)
    if cell is not None:
        out.cell_frobenius, out.cell_spectral, out.cell_share = cfro, cspec, share
    return out


def by_lag(norms: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average a (B, n_starts, n_ends) table over everything with the same lag t' - t:
    returns (lags, mean over starts and batch of log10 of the norm)."""
    lag = ends.unsqueeze(0) - starts.unsqueeze(1)  # (n_s, n_e)
    lags = torch.unique(lag[lag > 0])
    logs = torch.log10(norms.clamp_min(1e-300))
    means = torch.stack([logs[:, lag == L].nanmean() for L in lags])
    return lags, means
