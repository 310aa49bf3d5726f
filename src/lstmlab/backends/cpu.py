"""The fused CPU backend: a whole sequence, forward and backward, in compiled code.

Same contract as `reference.run_layer` (every registered cell, the truncated rule,
variable lengths, reversal), computed by one generic C++ kernel driven by the CellSpec's
flags (csrc/cells.h), so a newly registered cell is covered without new code:

    forward   gates = x W_ih^T (one matrix product per chunk of steps), then per step one
              recurrent product (FGR: two, h W_hh^T and a W_gg^T, with no zero blocks)
              and one vectorised pointwise pass; saved for backward: the gate
              activations, every c_t, and the outputs.
    backward  per step (last to first): one product with the recurrent weights (FGR: two)
              and the hand-written pointwise backward; dx, dW_ih, dW_hh (dW_gg) as large
              products over a chunk of steps (about 256 rows) each time a chunk is done,
              so the pre-activation gradients of only two chunks are ever held; bias and
              peephole gradients accumulate in the pointwise pass.

On machines with more than one thread the work is shared in one of two ways
(csrc/steps.h, chosen by `_split`): when a step's products are small and the batch has at
least 8 rows a thread, the batch rows are cut into groups, one per thread, that run the
sequence side by side and meet once per chunk of steps (to share the input projection and
the weight-gradient products); otherwise the hidden units are cut into slices, one per
thread, that run each time step side by side and meet at every step. The extension is
compiled on first use (csrc/__init__.py); `available()` says whether that worked and why
not.

Per-step gradient norms, opt in, at no extra pass (see `GradNorms`):

    with lstmlab.backends.cpu.GradNorms() as norms:
        out, _ = model(x)
    loss(out).backward()
    norms.h[0]    # (T, B): ||dL/dh_t|| of the first layer

Double backward (a backward with create_graph=True: gradient penalties, Hessian-vector
products) recomputes the layer with the reference backend from the saved inputs and
differentiates that, so every order of derivative is the reference's; a first-order
backward runs the kernel's hand-written backward.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field

import torch

from ..cells import CellSpec
from . import reference
from .csrc.layout import plan as layout_plan
from .reference import CellParams, State

DTYPES = (torch.float32, torch.float64)

# ---- building and loading the extension ------------------------------------------------
_ext = None
_ext_error: str | None = None


def _extension():
    """The compiled module; raises RuntimeError with the reason if it cannot be had."""
    global _ext, _ext_error
    if _ext is None and _ext_error is None:
        from . import csrc

        try:
            _ext = csrc.load()
        except csrc.BuildError as e:
            _ext_error = str(e)
    if _ext is None:
        raise RuntimeError(_ext_error)
    return _ext


def available() -> tuple[bool, str]:
    """(True, how) if the compiled backend loads (building it on first call), else
    (False, why). Never raises."""
    try:
        ext = _extension()
    except RuntimeError as e:
        return False, str(e)
    built = getattr(ext, "build_seconds", None)
    how = f"compiled for this CPU ({8 * ext.vector_bytes}-bit vectors)"
    return True, how + (f", built in {built:.0f} s" if built else "")


# ---- sharing the work between threads, and the in-loop product -------------------
# The kernel's tuning (defaults measured on the benchmark grid, see BENCHMARKS.md).
# Recurrent products up to this many multiply-adds use the kernel's own register-blocked
# product; larger ones the BLAS. With groups of batch rows the products have fewer rows,
# where the BLAS does worse (and each call inside the threads' team costs it more).
SMALL_GEMM_LIMIT = 1 << 16
GROUP_SMALL_GEMM_LIMIT = 1 << 19
# Groups of batch rows, one per thread, when every group gets at least this many rows and a
# step's recurrent products have at most this many multiply-adds: the groups meet once per
# chunk of steps, slices of hidden units once per step; larger products split well by
# units, and every group reads all the weights at every step.
GROUP_MIN_ROWS = 8
GROUP_MAX_WORK = 1 << 23
# Otherwise one slice per thread once a step's recurrent product has this many
# multiply-adds: below it the per-step synchronisation costs more than the second core gains.
PARALLEL_MIN_WORK = 1 << 17
# Let float products use MKL's packed-weight API when torch's BLAS is MKL.
USE_PACKED_GEMM = True
# Steps per chunk of the input projection and of the weight-gradient products (0: the
# kernel chooses, see chunk_steps in csrc/lstmlab_cpu.cpp).
CHUNK_STEPS = 0
# The backward multiplies the pre-activation gradients by the recurrent weights. Weights of
# up to this many bytes (and small beside the gradients of the sequence) it may read through
# a copy in the kernel's row order, which spares it staging the gradients in torch's order
# (slices interleaved, slow at small sizes); larger ones in place, so that no copy of them is
# made (FGR at H = 512: 13 MiB). See backward_impl in csrc/lstmlab_cpu.cpp.
OWN_ORDER_MAX_BYTES = 4 << 20
# FGR's gate-to-gate weights reach a slice's products in one block per gate: up to this many
# bytes per slice they are gathered into one block (one product, not three).
GATHER_MAX_BYTES = 1 << 20


TUNING = ("SMALL_GEMM_LIMIT", "GROUP_SMALL_GEMM_LIMIT", "GROUP_MIN_ROWS", "GROUP_MAX_WORK", "PARALLEL_MIN_WORK",
          "USE_PACKED_GEMM", "CHUNK_STEPS", "OWN_ORDER_MAX_BYTES", "GATHER_MAX_BYTES")


@contextlib.contextmanager
def tuning(**values: int):
    """Override the tuning constants above (names in TUNING; whole numbers, USE_PACKED_GEMM
    0 or 1) for the calls made inside the block: `lstmlab bench --variant` compares
    settings this way. Not thread-safe: the constants are module-wide."""
    for name, value in values.items():
        if name not in TUNING:
            raise ValueError(f"tuning {name}={value!r}: unknown; allowed: {', '.join(TUNING)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (
                name == "USE_PACKED_GEMM" and value > 1):
            raise ValueError(f"tuning {name}={value!r} is invalid; allowed: a whole number >= 0"
                             + (" (0 or 1)" if name == "USE_PACKED_GEMM" else ""))
    saved = {name: globals()[name] for name in values}
    globals().update({n: bool(v) if n == "USE_PACKED_GEMM" else v for n, v in values.items()})
    try:
        yield
    finally:
        globals().update(saved)


def _tune(groups: int) -> list[int]:
    small = GROUP_SMALL_GEMM_LIMIT if groups > 1 else SMALL_GEMM_LIMIT
    return [small, int(USE_PACKED_GEMM), CHUNK_STEPS, OWN_ORDER_MAX_BYTES, GATHER_MAX_BYTES]


def _split(B: int, H: int, work: int, lanes: int) -> tuple[tuple[int, ...], int]:
    """How the threads share a sequence: (slice edges of the hidden units, batch groups)."""
    # one worker per thread, never more than there are cores
    threads = min(torch.get_num_threads(), os.cpu_count() or 1)
    groups = min(threads, B // GROUP_MIN_ROWS)
    if groups >= 2 and work <= GROUP_MAX_WORK:
        return (0, H), groups
    P = 1 if threads < 2 or work < PARALLEL_MIN_WORK else min(threads, max(1, H // lanes))
    # slice edges on whole vectors where possible
    edges = [min(H, round(H * p / P / lanes) * lanes) for p in range(P + 1)]
    edges[-1] = H
    return tuple(sorted(set(edges))), 1


# ---- the autograd Function -----------------------------------------------------------
class _Fused(torch.autograd.Function):
    """One layer and direction; tensors in torch's layout in and out, the kernel's layout
    (csrc/layout.py: plan.pack, plan.unpack_*) inside, so that autograd sees one node."""

    @staticmethod
    def forward(ctx, spec, truncate, plan, groups, lengths, keep, return_cells, record, x, h0, c0, a0, W_ih, W_hh, b_ih,
                b_hh, W_ch, W_gg):
        x_in, c0_in, W_hh_in, W_gg_in = x, c0, W_hh, W_gg
        none = x.new_empty(0)
        Wx, bx, s0 = plan.pack(W_ih, b_ih, b_hh, h0, a0)
        c0 = none if c0 is None else c0.contiguous()
        peep = none if W_ch is None else W_ch.contiguous()
        # the recurrent weights as they are (the kernel reads them in its order): no copy of
        # them outlives a pass
        W_hh, W_gg = W_hh.contiguous(), none if W_gg is None else W_gg.contiguous()
        maps = [none.long() if m is None else m for m in (plan.r_src, plan.a_src)]
        out, gates, C, s_fin, c_fin, cells = _extension().forward(
            plan.cfg, plan.bounds, groups, x, s0, c0, Wx, bx, W_hh, W_gg, *maps, peep, lengths, keep, return_cells,
            _tune(groups))
        ctx.plan, ctx.groups, ctx.record, ctx.maps = plan, groups, record, maps
        ctx.flags = (a0 is not None, b_ih is not None, W_ch is not None, c0.numel() > 0)
        ctx.save_for_backward(x, s0, c0, Wx, W_hh, W_gg, peep, lengths, out, gates, C)
        # for a backward with create_graph=True: the inputs as given
        ctx.inputs = (x_in, h0, c0_in, a0, W_ih, W_hh_in, b_ih, b_hh, W_ch, W_gg_in)
        ctx.spec, ctx.truncate, ctx.return_cells = spec, truncate, return_cells
        h_n, a_n = plan.unpack_state(s_fin, a0 is not None)
        a_n = none if a_n is None else a_n
        ctx.mark_non_differentiable(*[t for t in (c_fin, a_n, cells) if t.numel() == 0])
        return out, h_n, c_fin, a_n, cells

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, da_n, dcells):
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            if ctx.record is not None:
                ctx.record.fill(None, None)
            return (None,) * 8 + _reference_grads(ctx.spec, ctx.truncate, ctx.return_cells, ctx.saved_tensors[7],
                                                   ctx.inputs, (dout, dh_n, dc_n, da_n, dcells))
        x, s0, c0, Wx, W_hh, W_gg, peep, lengths, out, gates, C = ctx.saved_tensors
        plan, (fgr, bias, peepholes, lstm) = ctx.plan, ctx.flags
        none = x.new_empty(0)
        pick = lambda t: none if t is None else t.contiguous()  # noqa: E731
        ds_fin = none
        if dh_n is not None or da_n is not None:
            H = plan.H
            ds_fin = dh_n if dh_n is not None else s0.new_zeros(s0.shape[0], H)
            if fgr:
                ds_fin = torch.cat([ds_fin, da_n if da_n is not None else s0.new_zeros(s0.shape[0], s0.shape[1] - H)], 1)
            ds_fin = (ds_fin if plan.s_src is None else ds_fin.index_select(1, plan.s_src)).contiguous()
        want = ctx.record is not None
        dx, ds0, dc0, dWx, dbx, dW_hh, dW_gg, dpeep, norm_h, norm_c = _extension().backward(
            plan.cfg, plan.bounds, ctx.groups, x, s0, c0, Wx, W_hh, W_gg, *ctx.maps, peep, lengths, out, gates, C,
            pick(dout), ds_fin, pick(dc_n), pick(dcells), want, _tune(ctx.groups))
        if want:
            ctx.record.fill(norm_h, norm_c if norm_c.numel() else None)
        dh0, da0 = plan.unpack_state(ds0, fgr)
        dW_ih, db_ih, db_hh = plan.unpack_grads(dWx, dbx, bias)
        return (None,) * 8 + (dx, dh0, dc0 if lstm else None, da0, dW_ih, dW_hh, db_ih, db_hh,
                dpeep if peepholes else None, dW_gg if fgr else None)


def _reference_grads(spec, truncate, return_cells, lengths, inputs, grads):
    """The gradients of one run with respect to `inputs` (x, h0, c0, a0, W_ih, W_hh, b_ih,
    b_hh, W_ch, W_gg; None where absent), given the gradients of its outputs (out, h_n, c_n,
    a_n, cells), as a differentiable function of both: the reference backend's run from the
    same inputs, differentiated with create_graph=True."""
    x, h0, c0, a0, *weights = inputs
    state = tuple(t for t in (h0, c0, a0) if t is not None)
    with torch.enable_grad():
        out, final, cells = reference.run_layer(spec, CellParams(*weights), x, state,
                                                lengths if lengths.numel() else None, truncate=truncate,
                                                return_cells=return_cells)
    outs = [out, *final] + ([cells] if return_cells else [])
    dout, dh_n, dc_n, da_n, dcells = grads
    douts = [dout, dh_n, dc_n, da_n][:1 + len(final)] + ([dcells] if return_cells else [])
    pairs = [(o, g) for o, g in zip(outs, douts, strict=True) if g is not None]
    wrt = [(k, t) for k, t in enumerate(inputs) if t is not None and t.requires_grad]
    got = torch.autograd.grad([o for o, _ in pairs], [t for _, t in wrt], [g for _, g in pairs],
                              create_graph=True, allow_unused=True)
    result = [None] * len(inputs)
    for (k, t), g in zip(wrt, got):
        result[k] = torch.zeros_like(t) if g is None else g
    return tuple(result)


_warned: set[str] = set()


def _fallback(why: str, *args, **kw):
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"lstmlab cpu backend: {why}; using the reference backend for it", stacklevel=4)
    return reference.run_layer(*args, **kw)


def run_layer(spec: CellSpec, p: CellParams, x: torch.Tensor, state: State,
              lengths: torch.Tensor | None = None, reverse: bool = False,
              truncate: bool | None = None, return_cells: bool = False):
    """Run one layer and direction over a sequence: `reference.run_layer`'s contract.

    Args:
        x: (T, B, I). state: initial state tuple in spec.state_names order.
        lengths: (B,) valid lengths or None. reverse: run each sequence backwards.
        truncate: the 1997 truncated gradient; None takes the cell's default.
        return_cells: also return every step's c_t (LSTM cells).
    Returns:
        output (T, B, H), final state tuple, cells (T, B, H) or None.
    """
    truncate = spec.truncate if truncate is None else truncate
    if x.device.type != "cpu" or x.dtype not in DTYPES:
        return _fallback(f"{x.dtype} on {x.device} is not supported (float32/float64 on cpu)",
                         spec, p, x, state, lengths, reverse, truncate, return_cells)
    T, B, _ = x.shape
    H = p.weight_hh.shape[1]
    if lengths is not None:
        lengths = lengths.to("cpu", torch.long)
        if bool((lengths >= T).all()):
            lengths = None
    if reverse:
        x = reference.reverse_padded(x, lengths)
    lanes = _extension().vector_bytes // x.element_size()
    work = B * (p.weight_hh.numel() + (p.weight_gg.numel() if p.weight_gg is not None else 0))  # multiply-adds
    bounds, groups = _split(B, H, work, lanes)
    plan = layout_plan(spec, H, bounds, bool(truncate))
    record = GradNorms._register(reverse, lengths)
    lens = lengths.contiguous() if lengths is not None else x.new_empty(0, dtype=torch.long)
    lstm, fgr = spec.kind == "lstm", spec.gate_recurrence
    tensors = (x.contiguous(), state[0], state[1] if lstm else None, state[2] if fgr else None,
               p.weight_ih, p.weight_hh, p.bias_ih, p.bias_hh, p.weight_ch, p.weight_gg)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)  # backward to come
    out, h_n, c_n, a_n, cells = _Fused.apply(spec, bool(truncate), plan, groups, lens, keep, bool(return_cells and lstm), record, *tensors)
    final = ((h_n, c_n, a_n) if fgr else (h_n, c_n)) if lstm else (h_n,)
    cells = cells if return_cells and lstm else None
    if reverse:
        out = reference.reverse_padded(out, lengths)
        cells = reference.reverse_padded(cells, lengths) if cells is not None else None
    return out, final, cells


# ---- per-step gradient norms ---------------------------------------------------------
@dataclass
class RunNorms:
    """The norms of one run_layer call (one layer and direction), filled by backward.

    h: (T, B) ||dL/dh_t||; c: (T, B) ||dL/dc_t|| (LSTM cells, else None). Time in input
    order, also for the reverse direction; 0 past a sequence's length.
    """

    reverse: bool
    lengths: torch.Tensor | None
    h: torch.Tensor | None = None
    c: torch.Tensor | None = None

    def fill(self, h, c):
        if self.reverse:
            h = reference.reverse_padded(h, self.lengths)
            c = reference.reverse_padded(c, self.lengths) if c is not None else None
        self.h, self.c = h, c


@dataclass
class GradNorms:
    """Opt in to per-step gradient norms from the cpu backend's backward pass.

    Every run_layer call of the cpu backend made inside the `with` block (for a
    `Recurrent`: layer 0, its reverse direction if bidirectional, layer 1, ...) is
    recorded; the backward pass, which may run after the block, fills in for each

        h[k][t, b] = ||dL/dh_t||   (over the hidden units; shape (T, B))
        c[k][t, b] = ||dL/dc_t||   (LSTM cells; None for rnn and gru)

    where dL/dh_t is the whole gradient that reaches the state h_t of sequence b: from
    the output at t, from every later step and from the final state; dL/dc_t likewise is
    the total derivative with respect to c_t, through h_t = o act(c_t), the output gate's
    peephole and c_{t+1} (under the truncated rule: the truncated gradient). These are the
    gradients of the states the reference loop computes at each step (the quantities
    lstmlab.analysis.flow records through hooks). t runs in input order, also for the
    reverse direction; steps past a sequence's length are 0. The norms come out of the
    pointwise backward pass itself (no extra pass); runs outside a block cost nothing. A
    later backward through the same graph overwrites them.
    """

    runs: list[RunNorms] = field(default_factory=list)

    @property
    def h(self) -> list[torch.Tensor | None]:
        return [r.h for r in self.runs]

    @property
    def c(self) -> list[torch.Tensor | None]:
        return [r.c for r in self.runs]

    def __enter__(self) -> "GradNorms":
        _RECORDERS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _RECORDERS.remove(self)

    @staticmethod
    def _register(reverse: bool, lengths: torch.Tensor | None) -> RunNorms | None:
        if not _RECORDERS:
            return None
        run = RunNorms(reverse, lengths)
        _RECORDERS[-1].runs.append(run)
        return run


_RECORDERS: list[GradNorms] = []
