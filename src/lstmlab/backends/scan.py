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

Non-finite values. A minlstm or mingru layer (`run_layer`, where each h_t is a convex
combination of h_{t-1} and h~_t) is finite exactly where the sequential recurrence is, but
not always the same non-finite value: a decay compounded over a chunk can underflow to 0
where the loop's tiny factor keeps an infinite state infinite (0 * inf = NaN), and
i' h~ is exp(log i' + log h~) for g_min, which is inf where the loop's 0 * inf is NaN. The
general `scan` (b of any sign) sums a chunk's inputs before it meets the state, so near the
dtype's largest values it can overflow where the loop, whose state cancels them step by
step, does not (and the other way round).

Backward. The adjoint of the recurrence is the same recurrence backwards in time,
g_t = dh_t + a_{t+1} g_{t+1}, solved by the same scan run in reverse; then
d log a_t = g_t a_t h_{t-1}, db_t = g_t, dh0 = a_1 g_1. `scan`'s autograd Function saves
log a, h0 and h instead of a graph per step, and its backward is itself differentiable (it
calls the scan through the Function): double backward is exact. The layer (`run_layer`)
goes one step further: its Function saves only the pre-activations k and h, recomputes the
gates from k in its backward and forms dk in closed form, so that a training step keeps
no log-space intermediates (under create_graph it differentiates the recomputed
composition instead).

Shapes: T time, B batch, I input features, H hidden units.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cells import ACTIVATIONS
from ..errors import ArgumentError
from .reference import CellParams, State, input_projection, reverse_padded

KINDS = ("minlstm", "mingru")
_DIRECT = 32  # sequences this short (and the top levels of the recursion) run step by step


def _chunked(src: torch.Tensor, L: int, C: int, reverse: bool) -> torch.Tensor:
    """(T, N) -> (L, C, N), step j of chunk c at [j, c]. The C * L - T steps that do not fit
    are zeros (a = 1, b = 0) beyond the sequence's end in its direction of time: at the end
    of the last chunk forwards, at the start of the first in reverse."""
    T, N = src.shape
    out = src.new_empty(L, C, N)
    r = T - (C - 1) * L  # steps in the partial chunk
    if reverse:
        out[: L - r, 0].zero_()
        out[L - r :, 0].copy_(src[:r])
        out[:, 1:].copy_(src[r:].view(C - 1, L, N).transpose(0, 1))
    else:
        out[:, :-1].copy_(src[: T - r].view(C - 1, L, N).transpose(0, 1))
        out[:r, -1].copy_(src[T - r :])
        out[r:, -1].zero_()
    return out


def _unchunked(h: torch.Tensor, T: int, reverse: bool) -> torch.Tensor:
    """The inverse of `_chunked`: (L, C, N) -> (T, N), without the padded steps."""
    L, C, N = h.shape
    out = h.new_empty(T, N)
    r = T - (C - 1) * L
    if reverse:
        out[:r].copy_(h[L - r :, 0])
        out[r:].view(C - 1, L, N).copy_(h[:, 1:].transpose(0, 1))
    else:
        out[: T - r].view(C - 1, L, N).copy_(h[:, :-1].transpose(0, 1))
        out[T - r :].copy_(h[:r, -1])
    return out


def _scan_forward(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """h_t = exp(log_a_t) h_{t-1} + b_t for (T, N) log_a, b and (N,) h0; no autograd.

    reverse: h_t = exp(log_a_t) h_{t+1} + b_t from h_{T+1} = h0 (the same recurrence run
    backwards in time, without copying the inputs into reversed order)."""
    T, N = b.shape
    if T <= _DIRECT:
        a, h, rows = log_a.exp(), h0, [None] * T
        for t in range(T - 1, -1, -1) if reverse else range(T):
            h = rows[t] = torch.addcmul(b[t], a[t], h)
        return torch.stack(rows)
    # L = ceil(sqrt(T)) steps in the chunks, ~sqrt(T) chunks; found by comparisons, which
    # torch.compile can make of a symbolic T (it cannot take math.isqrt of one)
    L = 1
    while L * L < T:
        L += 1
    C = -(-T // L)
    # Step j of every chunk at once, laid out (L, C, N) so that each step reads and writes
    # contiguous blocks (elementwise ops on strided slices, with out=, are ~15x slower on CPU).
    # Two working copies, updated in place: log_decay (the log of the decay from the chunk's
    # start, a running sum of log a) and acc (the chunk's own inputs, from a zero state).
    log_decay, acc = _chunked(log_a, L, C, reverse), _chunked(b, L, C, reverse)
    steps = [(j, j + 1) for j in range(L - 2, -1, -1)] if reverse else [(j, j - 1) for j in range(1, L)]
    last = 0 if reverse else -1
    if torch.compiler.is_exporting():
        # torch.export records these operations in place of the autograd Functions around
        # them, and its graph is differentiated operation by operation, which needs every
        # value it saves unchanged: the same steps without updates in place.
        acc_rows, decay_rows = list(acc.unbind(0)), list(log_decay.unbind(0))
        for j, prev in steps:
            acc_rows[j] = torch.addcmul(acc_rows[j], decay_rows[j].exp(), acc_rows[prev])
            decay_rows[j] = decay_rows[j] + decay_rows[prev]
        acc, log_decay = torch.stack(acc_rows), torch.stack(decay_rows)
    else:
        for j, prev in steps:
            acc[j].addcmul_(log_decay[j].exp(), acc[prev])
            log_decay[j].add_(log_decay[prev])
    ends = _scan_forward(log_decay[last], acc[last], h0, reverse)  # (C, N): h at each chunk's end
    starts = torch.cat([ends[1:], h0.unsqueeze(0)]) if reverse else torch.cat([h0.unsqueeze(0), ends[:-1]])
    return _unchunked(torch.addcmul(acc, log_decay.exp(), starts), T, reverse)


def _shifted(log_a: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The decays of the adjoint recurrence: the gradient reaching h_t from h_{t+1} is scaled
    by a_{t+1} (by a_{t-1} in reverse), and nothing comes from beyond the last step."""
    zero = log_a.new_zeros(1, *log_a.shape[1:])
    return torch.cat([zero, log_a[:-1]]) if reverse else torch.cat([log_a[1:], zero])


def _previous(h: torch.Tensor, h0: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The state each step starts from: h_{t-1} (h_{t+1} in reverse), h0 for the first."""
    return torch.cat([h[1:], h0.unsqueeze(0)]) if reverse else torch.cat([h0.unsqueeze(0), h[:-1]])


class _Scan(torch.autograd.Function):
    """h = scan(log_a, b, h0) on (T, N), (T, N), (N,) tensors; see the module docstring."""

    generate_vmap_rule = True  # (setup_context apart from forward: torch.func can transform it)

    @staticmethod
    def forward(log_a, b, h0, reverse):
        return _scan_forward(log_a, b, h0, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        log_a, _, h0, reverse = inputs
        ctx.save_for_backward(log_a, h0, output)
        ctx.reverse = reverse

    @staticmethod
    def backward(ctx, dh):
        log_a, h0, h = ctx.saved_tensors
        rev = ctx.reverse
        # g_t = dh_t + a_{t+1} g_{t+1} (forwards; a_{t-1} g_{t-1} in reverse): the same
        # recurrence run the other way in time, itself through this Function.
        g = _Scan.apply(_shifted(log_a, rev), dh, torch.zeros_like(h0), not rev)
        first = -1 if rev else 0
        return g * _previous(h, h0, rev) * log_a.exp(), g, log_a[first].exp() * g[first], None


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
    h = _Scan.apply(log_a.reshape(T, -1), b.reshape(T, -1), h0.reshape(-1), False)
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


def _gate_logs(kind: str, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log a and log i' of h_t = a_t h_{t-1} + i'_t h~_t, and k_h (h~ = act(k_h)), from
    k = x W_ih^T + b_ih (T, B, G*H)."""
    if kind == "mingru":  # rows [z; h~]: h_t = (1 - z) h_{t-1} + z h~
        k_z, k_h = k.chunk(2, dim=-1)
        return F.logsigmoid(-k_z), F.logsigmoid(k_z), k_h
    # minlstm, rows [f; i; h~]: h_t = f' h_{t-1} + i' h~, f' = f / (f + i) = sigmoid(log f - log i)
    k_f, k_i, k_h = k.chunk(3, dim=-1)
    d = F.logsigmoid(k_f) - F.logsigmoid(k_i)
    return F.logsigmoid(d), F.logsigmoid(-d), k_h


def _input(activation: str, log_in: torch.Tensor, k_h: torch.Tensor) -> torch.Tensor:
    """b_t = i'_t act(k_h): for g_min (positive) exp(log i' + log g(k_h)), in log space."""
    if activation == "g_min":
        return (log_in + _log_g(k_h)).exp()
    return log_in.exp() * ACTIVATIONS[activation].fn(k_h)


def _decay_and_input(kind: str, activation: str, k: torch.Tensor, valid: torch.Tensor | None):
    """log a and b of the recurrence h_t = a_t h_{t-1} + b_t; padded steps (valid False) hold
    the state (a = 1, b = 0)."""
    log_a, log_in, k_h = _gate_logs(kind, k)
    b = _input(activation, log_in, k_h)
    if valid is not None:
        log_a, b = torch.where(valid, log_a, 0.0), torch.where(valid, b, 0.0)
    return log_a, b


class _MinLayer(torch.autograd.Function):
    """h = the minlstm / mingru recurrence over k (T, B, G*H) from h0 (B, H), by the scan.

    Saves k and h only: its backward recomputes the gates from k and forms dk in closed form
    (h_t = a h_{t-1} + i' h~ with a, i' functions of k and h~ = act(k_h)), instead of
    autograd's intermediates of every log-space gate operation. Under create_graph (double
    backward) it differentiates the recomputed composition of differentiable operations
    (`_decay_and_input` and `_Scan`) instead."""

    generate_vmap_rule = True

    @staticmethod
    def forward(k, h0, valid, kind, activation):
        T, B, H = k.shape[0], *h0.shape
        log_a, b = _decay_and_input(kind, activation, k, valid)
        return _scan_forward(log_a.reshape(T, -1), b.reshape(T, -1), h0.reshape(-1)).view(T, B, H)

    @staticmethod
    def setup_context(ctx, inputs, output):
        k, h0, valid, kind, activation = inputs
        ctx.save_for_backward(k, h0, output, valid)
        ctx.kind, ctx.activation = kind, activation

    @staticmethod
    def backward(ctx, dh):
        k, h0, h, valid = ctx.saved_tensors
        kind, act = ctx.kind, ACTIVATIONS[ctx.activation]
        want_k, want_h0 = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph: differentiable all the way down
            inputs = [t for t, want in ((k, want_k), (h0, want_h0)) if want]
            with torch.enable_grad():
                log_a, b = _decay_and_input(kind, ctx.activation, k, valid)
                h_again = scan(log_a, b, h0)
            grads = iter(torch.autograd.grad(h_again, inputs, dh, create_graph=True))
            return (next(grads) if want_k else None), (next(grads) if want_h0 else None), None, None, None
        T, B, H = h.shape
        log_a, log_in, k_h = _gate_logs(kind, k)
        if valid is not None:
            log_a.masked_fill_(~valid, 0.0)
        # g_t = dL/dh_t in total: dh_t + a_{t+1} g_{t+1}, the recurrence backwards in time.
        g = _scan_forward(_shifted(log_a, False).view(T, -1), dh.reshape(T, -1), h0.new_zeros(B * H), True)
        g = g.view(T, B, H)
        dh0 = log_a[0].exp() * g[0] if want_h0 else None
        if not want_k:
            return None, dh0, None, None, None
        a = log_a.exp_()
        g_in = g.mul_(log_in.exp_())  # dL/dh~ = g i'
        del log_in
        dk = torch.empty_like(k)
        parts = dk.chunk(3 if kind == "minlstm" else 2, dim=-1)
        parts[-1].copy_(g_in * act.grad(k_h))
        # dL/d(log f - log i) (minlstm) = -dL/dk_z (mingru) = g a i' (h_{t-1} - h~): a = sigmoid of it, i' = 1 - a.
        D = _previous(h, h0, False).sub_(act.fn(k_h)).mul_(a).mul_(g_in)
        del a, g_in
        if kind == "mingru":
            parts[0].copy_(D.neg_())
        else:  # d (log sigmoid(k_f) - log sigmoid(k_i)) = sigmoid(-k_f) dk_f - sigmoid(-k_i) dk_i
            k_f, k_i, _ = k.chunk(3, dim=-1)
            parts[0].copy_(D * torch.sigmoid(-k_f))
            parts[1].copy_(D.mul_(torch.sigmoid(-k_i)).neg_())
        return dk, dh0, None, None, None


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
    h = _MinLayer.apply(k, state[0], valid, spec.kind, spec.activation)  # (T, B, H)
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
