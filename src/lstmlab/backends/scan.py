"""The parallel-in-time route for the cells whose recurrence is linear in h: minLSTM and minGRU.

Both cells (Feng et al. 2024; the equations are in MODERN.md and docs/cells.md) compute their
gates from x_t alone, so over a whole sequence their state obeys

    h_t = a_t h_{t-1} + b_t,   t = 1..T,   a_t in [0, 1],

with every a_t and b_t known before the first step. `scan` solves that recurrence for all t
with O(sqrt T) sequential tensor operations instead of T, and `run_layer` runs a minlstm or
mingru layer on it with `reference.run_layer`'s semantics (lengths, reverse, final state).
This module is the backend "scan" (`Recurrent(..., backend="scan")`; backend="auto" takes
it on devices other than the CPU only: see lstmlab.backends for why).

Numerics. The textbook log-space solution, log h_t = log A_t + logcumsumexp_s(log b_s - log A_s)
with log A_t = sum_{k<=t} log a_k, subtracts two numbers of size |log A_t| (thousands after a
few thousand steps of a = 0.5): in float32 that leaves an absolute error ~1e-7 |log A_t| in
log h, a relative error of 1e-4 and worse. The linear-space solution A_t * cumsum(b_s / A_s)
overflows. Here instead, in chunks of L ~ sqrt(T) steps:
  - the decay from the chunk's start, A_t = exp(cumsum of log a within the chunk), is a sum of
    the exact inputs log a: no rounding of a to float accumulates (a float32 a = 1 - 1e-9
    is 1.0; ten thousand of them are not), and its error eps |log A_t| only matters where
    A_t = exp(log A_t) is not negligible;
  - the chunk's own inputs are accumulated by the linear recurrence B_t = a_t B_{t-1} + b_t
    (L steps, run for all chunks at once): products and sums, no subtraction, no division;
  - the chunks' end states solve the same recurrence one level up (decays log A_L, inputs
    B_L), recursively, and h_t = A_t h_start + B_t.
Every operation is a product or a sum of terms whose weights are products of the a's, so the
error is that of a sum (relative to the sum of the magnitudes of its terms, as for the
sequential loop) with O(sqrt T) instead of O(T) roundings along any path. h0 and b may have
any sign. Values are in linear space throughout: the range is the dtype's, as for h itself.

Backward. The adjoint of the recurrence is the same recurrence backwards in time,
g_t = dh_t + a_{t+1} g_{t+1}, solved by the same scan; then d log a_t = g_t a_t h_{t-1},
db_t = g_t, dh0 = a_1 g_1. The custom autograd Function saves log a, h0 and h (three
(T, B, H) tensors) instead of a graph per step, and its backward is itself differentiable
(it calls the scan through the Function): double backward is exact.

Shapes: T time, B batch, I input features, H hidden units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..cells import ACTIVATIONS
from ..errors import ArgumentError
from .reference import CellParams, State, input_projection, reverse_padded

KINDS = ("minlstm", "mingru")
_DIRECT = 32  # sequences this short (and the top levels of the recursion) run step by step


def _scan_forward(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = exp(log_a_t) h_{t-1} + b_t for (T, N) log_a, b and (N,) h0; no autograd."""
    T, N = b.shape
    if T <= _DIRECT:
        out = torch.empty_like(b)
        a = log_a.exp()
        h = h0
        for t in range(T):
            h = torch.addcmul(b[t], a[t], h, out=out[t])
        return out
    L = math.isqrt(T - 1) + 1  # ceil(sqrt(T)): L steps in the chunks, ~sqrt(T) chunks
    C = -(-T // L)
    pad = C * L - T  # padded steps: a = 1, b = 0 (they come after every real step)
    if pad:
        log_a = torch.cat([log_a, log_a.new_zeros(pad, N)])
        b = torch.cat([b, b.new_zeros(pad, N)])
    # Step t of every chunk at once, laid out (L, C, N) so that each step reads and writes
    # contiguous blocks (elementwise ops on strided slices, with out=, are ~15x slower on CPU).
    # Two working copies, updated in place: log_decay (the log of the decay from the chunk's
    # start, a running sum of log a) and acc (the chunk's own inputs, from a zero state).
    log_decay = log_a.new_empty(L, C, N).copy_(log_a.view(C, L, N).transpose(0, 1))
    acc = b.new_empty(L, C, N).copy_(b.view(C, L, N).transpose(0, 1))
    for t in range(1, L):
        acc[t].addcmul_(log_decay[t].exp(), acc[t - 1])
        log_decay[t].add_(log_decay[t - 1])
    ends = _scan_forward(log_decay[-1], acc[-1], h0)  # (C, N): h at each chunk's end
    starts = torch.cat([h0.unsqueeze(0), ends[:-1]])  # (C, N)
    h = acc.addcmul_(log_decay.exp_(), starts)  # (L, C, N)
    return h.transpose(0, 1).reshape(C * L, N)[:T]


class _Scan(torch.autograd.Function):
    """h = scan(log_a, b, h0) on (T, N), (T, N), (N,) tensors; see the module docstring."""

    @staticmethod
    def forward(ctx, log_a, b, h0):
        h = _scan_forward(log_a, b, h0)
        ctx.save_for_backward(log_a, h0, h)
        return h

    @staticmethod
    def backward(ctx, dh):
        log_a, h0, h = ctx.saved_tensors
        # g_t = dh_t + a_{t+1} g_{t+1}: the forward recurrence on the time-reversed sequence,
        # whose step t sees the decay a_{t+1} (and a_{T+1} multiplies g_{T+1} = 0).
        log_a_next = torch.cat([log_a.new_zeros(1, log_a.shape[1]), log_a[1:].flip(0)])  # reversed in time
        g = _Scan.apply(log_a_next, dh.flip(0), torch.zeros_like(h0)).flip(0)
        h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])
        return g * h_prev * log_a.exp(), g, log_a[0].exp() * g[0]


def scan(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Solve h_t = a_t h_{t-1} + b_t for t = 1..T, all steps at once.

    Args:
        log_a: (T, ...) log of the decays a_t in [0, 1] (-inf for a_t = 0).
        b: (T, ...) the inputs, any sign.
        h0: (...) the state before step 1, any sign.
    Returns:
        h: (T, ...), h[t - 1] = h_t. Differentiable in all three (twice, too).
    """
    if log_a.shape != b.shape or b.shape[1:] != h0.shape:
        raise ArgumentError(
            f"scan: log_a {tuple(log_a.shape)}, b {tuple(b.shape)} and h0 {tuple(h0.shape)}: "
            "log_a and b must be (T, ...) and h0 (...) with the same trailing shape"
        )
    if b.shape[0] == 0:
        raise ArgumentError("scan: b has T = 0 steps; at least one is needed")
    T = b.shape[0]
    h = _Scan.apply(log_a.reshape(T, -1), b.reshape(T, -1), h0.reshape(-1))
    return h.view(b.shape)


def log_scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """`scan` for positive inputs given by their logs: h_t = a_t h_{t-1} + b_t with b_t = exp(log_b_t).

    Args:
        log_a: (T, B, H) log of a_t in [0, 1]. log_b: (T, B, H) log of b_t > 0 (-inf: b_t = 0).
        h0: (B, H), any sign.
    Returns:
        h: (T, B, H).
    """
    return scan(log_a, log_b.exp(), h0)


# ---- the cells -----------------------------------------------------------------------------


def _log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x) for Feng et al.'s g(x) = x + 1/2 (x >= 0), sigmoid(x) (x < 0)."""
    return torch.where(x >= 0, torch.log(x.clamp(min=0) + 0.5), F.logsigmoid(x))


def _decay_and_input(spec, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log a and b of the recurrence h_t = a_t h_{t-1} + b_t from k = x W_ih^T + b_ih (T, B, G*H)."""
    if spec.kind == "mingru":  # rows [z; h~]: h_t = (1 - z) h_{t-1} + z h~
        k_z, k_h = k.chunk(2, dim=-1)
        log_a, log_in = F.logsigmoid(-k_z), F.logsigmoid(k_z)
    else:  # minlstm, rows [f; i; h~]: h_t = f' h_{t-1} + i' h~, f' = f / (f + i) = sigmoid(log f - log i)
        k_f, k_i, k_h = k.chunk(3, dim=-1)
        d = F.logsigmoid(k_f) - F.logsigmoid(k_i)
        log_a, log_in = F.logsigmoid(d), F.logsigmoid(-d)
    if spec.activation == "g_min":  # positive: b = exp(log i' + log g(k_h))
        return log_a, (log_in + _log_g(k_h)).exp()
    return log_a, log_in.exp() * ACTIVATIONS[spec.activation].fn(k_h)


def run_layer(
    spec,
    p: CellParams,
    x: torch.Tensor,
    state: State,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    truncate: bool | None = None,
    return_cells: bool = False,
    probe=None,
):
    """Run one minlstm or mingru layer and direction over a sequence, all steps at once.

    The semantics of `reference.run_layer` (see there), for these two kinds only.

    Args:
        spec: the cell (kind "minlstm" or "mingru", and its `activation` for h~).
        p: weight_ih (G*H, I) with G = 3 (minlstm: rows f, i, h~) or 2 (mingru: rows z, h~),
            bias_ih (G*H,) or None; no recurrent weights.
        x: (T, B, I). state: (h,) with h (B, H).
        lengths: (B,) int64 valid lengths, or None when all are T. Past its length a
            sequence's state is held (a = 1, b = 0) and its output is zero.
        reverse: run each sequence backwards within its length.
        truncate: None or False (these cells have no truncated rule).
        return_cells, probe: not supported (ArgumentError).
    Returns:
        output (T, B, H), final state (h_T,), None.
    """
    if spec.kind not in KINDS:
        raise ArgumentError(f"scan backend: spec.kind={spec.kind!r} is not supported; allowed: {KINDS}")
    if truncate:
        raise ArgumentError(f"scan backend: truncate={truncate!r}; {spec.kind} has no truncated gradient (None/False)")
    if return_cells:
        raise ArgumentError(f"scan backend: return_cells={return_cells!r}; {spec.kind} has no cell state (False)")
    if probe is not None:
        raise ArgumentError(
            f"scan backend: probe={probe!r} needs the steps one by one; use the reference backend (probe=None here)"
        )
    if reverse:
        x = reverse_padded(x, lengths)
    k = input_projection(p, x)  # (T, B, G*H): one matrix product for all steps
    T = x.shape[0]
    valid = None
    if lengths is not None:
        valid = (torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device)).unsqueeze(-1)  # (T, B, 1)
        k = torch.where(valid, k, 0.0)  # nothing from the padding reaches the gates' gradients
    log_a, b = _decay_and_input(spec, k)
    if valid is not None:  # padded steps hold the state
        log_a, b = torch.where(valid, log_a, 0.0), torch.where(valid, b, 0.0)
    h = scan(log_a, b, state[0])  # (T, B, H)
    final = (h[-1],)
    out = h if valid is None else torch.where(valid, h, 0.0)
    if reverse:
        out = reverse_padded(out, lengths)
    return out, final, None


def available() -> tuple[bool, str]:
    """Always (True, how): plain PyTorch, on any device. Never raises."""
    return True, "plain PyTorch, any device (minlstm and mingru only)"


def supports(spec) -> tuple[bool, str]:
    """(True, "") for the kinds whose recurrence is linear in h (minlstm, mingru: any
    activation of h~), else (False, why). Never raises."""
    if spec.kind in KINDS:
        return True, ""
    return False, (
        f"kind {spec.kind!r} is not one the parallel scan computes ({', '.join(KINDS)}: "
        "their recurrence is linear in h)"
    )
