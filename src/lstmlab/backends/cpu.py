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

The modern cells (slstm, minlstm, mingru) run on a dedicated path of the same operators
(csrc/modern.h): x W_ih^T for all steps as one product; per step slstm's block-diagonal
recurrent product (one product per block of a head's units) and the pointwise pass; the
backward per step the pointwise backward (and slstm's dP R per block), then dx, dW_ih,
dW_hh and the bias gradients as products over all steps. Threads share it
(`_modern_split`): slstm by groups of batch rows, which never meet, or by blocks of units,
which meet at every step; the min cells by ranges of units, which never meet. slstm's n
and m cross as one [n | m] state in the FGR a slot; m is detached, as in the reference
step (it carries no gradient).

With a projection (CellParams.weight_hr, torch's proj_size; lstm kinds) h is proj_size
wide: h_t = (o_t * act(c_t)) W_hr^T is one more product per step, whose backward is one
product per step (dL/dm_t = dL/dh_t W_hr) and one per chunk (dW_hr). A slice of hidden
units cannot form its part of h_t before every slice has its o act(c), so a projected layer
runs either in groups of batch rows or in one worker: never in slices.

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
products, torch.func.grad, which always builds a graph) recomputes the layer with the
reference backend from the saved inputs and differentiates that, so every order of
derivative is the reference's; a first-order backward runs the kernel's hand-written
backward.

The kernel is the torch.library custom operator lstmlab::layer_forward, its backward
lstmlab::layer_backward (both with fake kernels), so that torch.jit.trace, torch.export,
torch.compile(fullgraph=True) and torch.func.grad / vmap work as they do for
torch.nn.LSTM. torch.func.vmap runs the kernel once per member of the vmapped batch (a
loop; the kernel has no batched form beyond its own batch dimension). GradNorms records
eager runs only: a traced or compiled run inside its block raises.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import warnings
import weakref
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from ..cells import ACTIVATIONS, CellSpec
from . import reference
from .csrc.boundary import ADMITTED, FORGET_ACTIVATIONS, MODERN_KINDS, admit, check_kernel
from .csrc.boundary import spec_key as _spec_key
from .csrc.boundary import spec_of as _spec_of
from .csrc.boundary import supports as _kernel_supports
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
            ext = csrc.load()
            check_kernel(ext)
            choice = os.environ.get("LSTMLAB_GEMM", "auto")
            if choice not in ext.gemm_choices:
                raise csrc.BuildError(f"LSTMLAB_GEMM={choice!r} is not allowed; allowed: {', '.join(ext.gemm_choices)}")
            ext.set_gemm_choice(ext.gemm_choices[choice])
            for double in (False, True):  # measure auto's choice now, outside any team of threads
                ext.gemm_uses_builtin(double)
            _ext = ext
        except csrc.BuildError as e:
            _ext_error = str(e)
    if _ext is None:
        raise RuntimeError(_ext_error)
    return _ext


def gemm_engine(dtype: torch.dtype = torch.float32) -> str:
    """Which engine the kernel's matrix products use for this dtype: "builtin" (its own
    register-blocked product, compiled for this CPU) or "blas" (the BLAS torch is linked
    with). LSTMLAB_GEMM=auto (the default) measures once per process which is faster here
    (MKL runs its AVX2 code on CPUs that are not Intel's); blas or builtin sets it."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"gemm_engine: dtype={dtype} is not supported; allowed: torch.float32, torch.float64")
    return "builtin" if _extension().gemm_uses_builtin(dtype == torch.float64) else "blas"


@contextlib.contextmanager
def using_gemm(engine: str | None):
    """A context manager: the kernel's matrix products use this engine ("blas" or
    "builtin") inside the block (None: unchanged), then what was set before (LSTMLAB_GEMM's
    choice). Process-wide, not thread-safe, as `tuning` is; for `lstmlab bench --sections gemm`
    and tests."""
    if engine is None:
        yield
        return
    ext = _extension()
    if engine not in ("blas", "builtin"):
        raise ValueError(f"using_gemm: engine={engine!r} is not allowed; allowed: 'blas', 'builtin' (or None)")
    saved = ext.gemm_choice()
    ext.set_gemm_choice(ext.gemm_choices[engine])
    try:
        yield
    finally:
        ext.set_gemm_choice(saved)


def supports(spec: CellSpec) -> tuple[bool, str]:
    """(True, "") if the kernel computes this cell, else (False, why) (csrc/boundary.py:
    its kind, forget mode and activations, and no CellSpec field it does not know). Needs
    no extension; never raises."""
    return _kernel_supports(spec)


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
@dataclass(frozen=True)
class Tuning:
    """The kernel's tuning, one frozen value (defaults measured on the benchmark grid, see
    BENCHMARKS.md): run_layer reads the current one (`tuning` swaps it) and passes it to
    `_split` and `_tune`. Whole numbers >= 0, USE_PACKED_GEMM 0 or 1; checked here.

    SMALL_GEMM_LIMIT, GROUP_SMALL_GEMM_LIMIT: recurrent products up to this many
        multiply-adds use the kernel's own register-blocked product, larger ones the BLAS
        (the second with groups of batch rows: the products have fewer rows, where the BLAS
        does worse, and each call inside the threads' team costs it more).
    GROUP_MIN_ROWS, GROUP_MAX_WORK: groups of batch rows, one per thread, when every group
        gets at least GROUP_MIN_ROWS rows and a step's recurrent products have at most
        GROUP_MAX_WORK multiply-adds: the groups meet once per chunk of steps, slices of
        hidden units once per step; larger products split well by units, and every group
        reads all the weights at every step.
    PARALLEL_MIN_WORK: otherwise one slice per thread once a step's recurrent product has
        this many multiply-adds: below it the per-step synchronisation costs more than the
        second core gains.
    USE_PACKED_GEMM: let float products use MKL's packed-weight API when torch's BLAS is MKL.
    CHUNK_STEPS: steps per chunk of the input projection and of the weight-gradient products
        (0: the kernel chooses, see chunk_steps in csrc/lstmlab_cpu.cpp).
    OWN_ORDER_MAX_BYTES: the backward multiplies the pre-activation gradients by the
        recurrent weights. Weights of up to this many bytes (and small beside the gradients
        of the sequence) it may read through a copy in the kernel's row order, which spares
        it staging the gradients in torch's order (slices interleaved, slow at small sizes);
        larger ones in place, so that no copy of them is made (FGR at H = 512: 13 MiB). See
        BackwardPass in csrc/lstmlab_cpu.cpp.
    GATHER_MAX_BYTES: FGR's gate-to-gate weights reach a slice's products in one block per
        gate: up to this many bytes per slice they are gathered into one block (one product,
        not three).
    force_groups, force_cuts: not tuning but a way to force a split whatever the sizes
        (tests; set through `force_split`): force_groups > 1 runs min(force_groups, B)
        groups of batch rows where that is at least 2; force_cuts (fractions of H in (0, 1))
        cuts the hidden units into slices there (slstm: each head's H / heads units into
        blocks, `_modern_split`). Neither: `_split`'s rule.
    """

    SMALL_GEMM_LIMIT: int = 1 << 16
    GROUP_SMALL_GEMM_LIMIT: int = 1 << 19
    GROUP_MIN_ROWS: int = 8
    GROUP_MAX_WORK: int = 1 << 23
    PARALLEL_MIN_WORK: int = 1 << 17
    USE_PACKED_GEMM: int = 1
    CHUNK_STEPS: int = 0
    OWN_ORDER_MAX_BYTES: int = 4 << 20
    GATHER_MAX_BYTES: int = 1 << 20
    force_groups: int = 0
    force_cuts: tuple[float, ...] = ()

    def __post_init__(self):
        for name in TUNING + ("force_groups",):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 0
                or (name == "USE_PACKED_GEMM" and value > 1)
            ):
                raise ValueError(
                    f"tuning {name}={value!r} is invalid; allowed: a whole number >= 0"
                    + (" (0 or 1)" if name == "USE_PACKED_GEMM" else "")
                )
        if not isinstance(self.force_cuts, tuple) or not all(
            isinstance(f, float) and 0 < f < 1 for f in self.force_cuts
        ):
            raise ValueError(
                f"tuning force_cuts={self.force_cuts!r} is invalid; allowed: a tuple of fractions "
                "of H, floats in (0, 1)"
            )


# The tuning names `tuning` (and `lstmlab bench --variant`) accept.
TUNING = (
    "SMALL_GEMM_LIMIT",
    "GROUP_SMALL_GEMM_LIMIT",
    "GROUP_MIN_ROWS",
    "GROUP_MAX_WORK",
    "PARALLEL_MIN_WORK",
    "USE_PACKED_GEMM",
    "CHUNK_STEPS",
    "OWN_ORDER_MAX_BYTES",
    "GATHER_MAX_BYTES",
)

# The Tuning that run_layer uses now: `tuning` and `force_split` swap it for a block.
_current = Tuning()


def current_tuning() -> Tuning:
    """The Tuning that cpu-backend calls made now run under."""
    return _current


@contextlib.contextmanager
def _swapped(value: Tuning):
    global _current
    saved, _current = _current, value
    try:
        yield value
    finally:
        _current = saved


def tuning(**values: int):
    """A context manager: the calls made inside the block run under the current Tuning with
    these values (names in TUNING; whole numbers, USE_PACKED_GEMM 0 or 1): `lstmlab bench
    --variant` compares settings this way. Not thread-safe: the current value is
    module-wide."""
    for name, value in values.items():
        if name not in TUNING:
            raise ValueError(f"tuning {name}={value!r}: unknown; allowed: {', '.join(TUNING)}")
    return _swapped(replace(_current, **values))


def force_split(groups: int | None = None, cuts: tuple[float, ...] | None = None):
    """A context manager for tests: the calls made inside the block share the work this way
    whatever the sizes: `groups` > 1 groups of batch rows (at most one a row; with one row,
    the usual rule), or the hidden units cut into slices at these fractions of H (each cut
    at least unit 1; slstm: of each head's H / heads units, into blocks; the min cells: into
    ranges). None keeps what the current Tuning forces (nothing by default)."""
    groups = _current.force_groups if groups is None else groups
    cuts = _current.force_cuts if cuts is None else tuple(float(f) for f in cuts)
    return _swapped(replace(_current, force_groups=groups, force_cuts=cuts))


def _tune(groups: int, tune: Tuning) -> list[int]:
    small = tune.GROUP_SMALL_GEMM_LIMIT if groups > 1 else tune.SMALL_GEMM_LIMIT
    return [small, tune.USE_PACKED_GEMM, tune.CHUNK_STEPS, tune.OWN_ORDER_MAX_BYTES, tune.GATHER_MAX_BYTES]


# Facts of the machine, which torch.compile takes as constants when it traces run_layer.
@torch.compiler.assume_constant_result
def _vector_bytes() -> int:
    return _extension().vector_bytes


_CORES = os.cpu_count() or 1


@torch.compiler.assume_constant_result
def _threads() -> int:
    return min(torch.get_num_threads(), _CORES)


def _split(B: int, H: int, work: int, lanes: int, tune: Tuning) -> tuple[tuple[int, ...], int]:
    """How the threads share a sequence: (slice edges of the hidden units, batch groups)."""
    if min(tune.force_groups, B) >= 2:
        return (0, H), min(tune.force_groups, B)
    if tune.force_cuts:
        return tuple(sorted({0, H, *(min(H, max(1, round(f * H))) for f in tune.force_cuts)})), 1
    threads = _threads()  # one worker per thread, never more than there are cores
    groups = min(threads, B // tune.GROUP_MIN_ROWS)
    if groups >= 2 and work <= tune.GROUP_MAX_WORK:
        return (0, H), groups
    P = 1 if threads < 2 or work < tune.PARALLEL_MIN_WORK else min(threads, max(1, H // lanes))
    # slice edges on whole vectors where possible
    edges = [min(H, round(H * p / P / lanes) * lanes) for p in range(P + 1)]
    edges[-1] = H
    return tuple(sorted(set(edges))), 1


# ---- the custom operators ------------------------------------------------------------
# One layer and direction is one operator, lstmlab::layer_forward, whose gradient is another,
# lstmlab::layer_backward (torch.library custom operators: torch.jit.trace, torch.export,
# torch.compile and torch.func see each as one node with known output shapes). Arguments:
#   cell     the CellSpec as a string (`_spec_key`); the kernel's layout (csrc/layout.py) is
#            rebuilt from it inside, cached;
#   config   whole numbers, `Config` below (the truncated rule, the threads' split, tuning);
#   lengths  (B,) int64 or None;
#   tensors  [x, h0, c0, a0, *CellParams' fields in order] in torch's layout, an empty (0,)
#            tensor where absent (None: torch's autograd wrapper takes no optional tensors
#            in a list): a parameter added to CellParams (last) arrives as one more entry.
# Few arguments, as lists: torch's wrapper handles each argument of each call in Python.
Tensor = torch.Tensor


class Config(NamedTuple):
    """The operators' `config` list, by name (to_list / of)."""

    truncate: int
    groups: int  # groups of batch rows (csrc/steps.h; the modern cells: _modern_split)
    keep: int  # save what the backward needs
    return_cells: int
    norms: int  # forward: the id of the RunNorms its backward fills; backward: want them; -1: none
    tune: tuple[int, ...]  # _tune(): 5 numbers
    bounds: tuple[int, ...]  # the slices of hidden units; the modern cells: (workers, *edges) (_modern_split)

    def to_list(self) -> list[int]:
        return [self.truncate, self.groups, self.keep, self.return_cells, self.norms, *self.tune, *self.bounds]

    @classmethod
    def of(cls, config: list[int]) -> Config:
        return cls(*config[:5], tuple(config[5:10]), tuple(config[10:]))


def _state_out(s, plan, with_a):
    """(h, a) from the kernel's state S: each its own tensor (a custom operator's outputs may
    not share memory), a (0,) without FGR."""
    h, a = plan.unpack_state(s, with_a)
    return (h, s.new_empty(0)) if a is None else (h.clone(), a.clone())


_REQUIRED = (0, 1, 4, 5)  # x, h0, weight_ih, weight_hh: never absent (may be empty)


def _present(tensors):
    """The operators' `tensors` with None for the empty entries that stand for absent ones
    (an empty batch is not run by run_layer: its c0 would read as absent)."""
    return [t if k in _REQUIRED or t.numel() else None for k, t in enumerate(tensors)]


@functools.lru_cache(maxsize=256)
def _kernel_plan(cell: str, H: int, bounds: tuple[int, ...], truncate: bool, proj: int):
    """The layout Plan of a call and the extension's Cell made from its fields by name
    (checked there, once per plan)."""
    plan = layout_plan(_spec_of(cell), H, bounds, truncate, proj)
    return plan, _extension().Cell(**plan.cfg)


def _kernel_args(cell, c, lengths, tensors, with_bias=True):
    """The plan and the kernel's Cell, the packed input weights (and with_bias, biases: the
    backward needs none) and state, and the arguments every kernel call takes in torch's
    layout or as given (csrc/lstmlab_cpu.cpp forward/backward)."""
    x, h0, c0, a0, W_ih, W_hh, b_ih, b_hh, W_ch, W_gg, W_hr = tensors
    proj = 0 if W_hr is None else W_hr.shape[0]
    H = W_hh.shape[0] // len(_spec_of(cell).gates)
    plan, kcell = _kernel_plan(cell, H, c.bounds, bool(c.truncate), proj)
    none = x.new_empty(0)
    pick = lambda t: none if t is None else t.contiguous()
    Wx, bx, s0 = plan.pack(W_ih, b_ih if with_bias else None, b_hh, h0, a0)
    maps = [none.long() if m is None else m for m in (plan.r_src, plan.a_src)]
    lens = none.long() if lengths is None else lengths.contiguous()
    # the recurrent weights as they are (the kernel reads them in its order)
    return plan, kcell, Wx, bx, s0, (pick(c0), W_hh.contiguous(), pick(W_gg), *maps, pick(W_ch), lens), pick(W_hr)


def _forward_impl(cell: str, config: list[int], lengths: Tensor | None, tensors: list[Tensor]) -> list[Tensor]:
    """-> [out (T, B, P), h_n (B, P), c_n (B, H), a_n (B, A*H), cells (T, B, H), and for
    layer_backward the gate activations, every c_t and (with a projection) every
    o_t act(c_t) in the kernel's layout (if keep)]; (0,) where absent. P = proj_size or H."""
    if tensors[0].shape[1] == 0:  # no rows (eager calls never get here: run_layer answers them)
        return _forward_outputs(cell, config, tensors, tensors[0].new_zeros)
    if _spec_of(cell).kind in MODERN_KINDS:
        return _modern_forward(_spec_of(cell), config, lengths, tensors)
    c, tensors = _fitted(config, tensors[0]), _present(tensors)
    plan, kcell, Wx, bx, s0, (c0, W_hh, W_gg, r_src, a_src, peep, lens), W_hr = _kernel_args(cell, c, lengths, tensors)
    x, a0 = tensors[0].contiguous(), tensors[3]
    out, gates, C, s_fin, c_fin, cells, M = _extension().forward(
        kcell,
        plan.bounds,
        c.groups,
        x,
        s0,
        c0,
        Wx,
        bx,
        W_hh,
        W_gg,
        r_src,
        a_src,
        peep,
        lens,
        bool(c.keep),
        bool(c.return_cells),
        list(c.tune),
        W_hr,
    )
    h_n, a_n = _state_out(s_fin, plan, a0 is not None)
    return [out, h_n, c_fin, a_n, cells, gates, C, M]


_layer_forward = torch.library.custom_op("lstmlab::layer_forward", _forward_impl, mutates_args=(), device_types="cpu")


def _modern_codes(spec: CellSpec) -> tuple[int, int, int]:
    """csrc/modern.h's kind, the min cells' activation (slstm: identity's code, unused) and
    slstm's forget activation."""
    act = ACTIVATIONS[spec.activation if spec.kind != "slstm" else "identity"].code
    return MODERN_KINDS[spec.kind], act, FORGET_ACTIVATIONS[spec.forget_activation]


def _modern_forward(spec, config, lengths, tensors):
    """layer_forward for slstm, minlstm, mingru (csrc/modern.h): a0 is slstm's [n0 | m0],
    a_n [n_n | m_n]; gates the pre-activations, C every step's c, n, m (keep)."""
    c = Config.of(config)
    x, h0, c0, a0, W_ih, W_hh, b_ih, b_hh = _present(tensors)[:8]
    none = x.new_empty(0)
    pick = lambda t: none if t is None else t.contiguous()
    lens = none.long() if lengths is None else lengths.contiguous()
    out, h_n, c_n, a_n, K, S = _extension().modern_forward(
        *_modern_codes(spec),
        x.contiguous(),
        h0.contiguous(),
        pick(c0),
        pick(a0),
        W_ih.contiguous(),
        pick(b_ih),
        pick(W_hh),
        pick(b_hh),
        lens,
        bool(c.keep),
        c.tune[0],
        bool(c.tune[1]),
        c.groups,
        c.bounds[0],
        list(c.bounds[1:]),
    )
    return [out, h_n, c_n, a_n, x.new_empty(0), K, S, x.new_empty(0)]


def _fitted(config: list[int], x: Tensor) -> Config:
    """The config, with no more batch groups than x has rows: a traced graph keeps the split
    of the batch it was traced with, and runs at any batch size, as torch.nn.LSTM's does."""
    c = Config.of(config)
    return c._replace(groups=min(c.groups, x.shape[1]))


def _forward_outputs(cell, config, tensors, new):
    """layer_forward's outputs, each new(*shape): the fake kernel's (new_empty), or those of
    a batch of no rows (new_zeros), which a traced or compiled graph can be called with."""
    spec, c = _spec_of(cell), Config.of(config)
    if spec.kind in MODERN_KINDS:  # csrc/modern.h: out, h_n, c_n, [n_n | m_n], -, K, S, -
        (T, B, _), G = tensors[0].shape, len(spec.gates)
        H, slstm = tensors[4].shape[0] // G, spec.kind == "slstm"
        return [
            new(T, B, H),
            new(B, H),
            new(B, H) if slstm else new(0),
            new(B, 2 * H) if slstm else new(0),
            new(0),
            new(T * B * G * H) if c.keep else new(0),
            new((T + 1) * B * 3 * H) if c.keep and slstm else new(0),
            new(0),
        ]
    x, W_hh, W_gg, W_hr = tensors[0], tensors[5], tensors[9], _present(tensors)[10]
    (T, B, _), H = x.shape, W_hh.shape[0] // len(spec.gates)
    P = H if W_hr is None else W_hr.shape[0]
    lstm = spec.kind == "lstm"
    gate_cols = (4 if spec.kind == "gru" else len(spec.gates)) * H  # the kernel's gates columns (csrc/layout.py)
    return [
        new(T, B, P),
        new(B, P),
        new(B, H) if lstm else new(0),
        new(B, W_gg.shape[0]) if spec.gate_recurrence else new(0),
        new(T, B, H) if lstm and c.return_cells else new(0),
        new(T * B * gate_cols) if c.keep else new(0),
        new(T * B * H) if c.keep and lstm else new(0),
        new(T * B * H) if c.keep and W_hr is not None else new(0),
    ]


@_layer_forward.register_fake
def _(cell, config, lengths, tensors):
    return _forward_outputs(cell, config, tensors, tensors[0].new_empty)


def _backward_impl(
    cell: str,
    config: list[int],
    lengths: Tensor | None,
    tensors: list[Tensor],
    saved: list[Tensor],
    grads: list[Tensor | None],
) -> list[Tensor]:
    """The kernel's backward. saved: layer_forward's out, gates, C, M; grads: those of out,
    h_n, c_n, a_n, cells (None: zero). -> [one per entry of `tensors` (the gradient; (0,)
    where the entry is absent), norm_h (T, B), norm_c (T, B)]; the norms (0,) unless wanted
    (config's norms >= 0)."""
    if tensors[0].shape[1] == 0:  # no rows: zero weight gradients, as torch.nn gives
        return _backward_outputs(cell, config, tensors, tensors[0].new_zeros)
    if _spec_of(cell).kind in MODERN_KINDS:
        return _modern_backward(_spec_of(cell), config, lengths, tensors, saved, grads)
    c, tensors = _fitted(config, tensors[0]), _present(tensors)
    plan, kcell, Wx, _, s0, (c0, W_hh, W_gg, r_src, a_src, peep, lens), W_hr = _kernel_args(
        cell, c, lengths, tensors, with_bias=False
    )
    x, a0, b_ih = tensors[0].contiguous(), tensors[3], tensors[6]
    none = x.new_empty(0)
    pick = lambda t: none if t is None else t.contiguous()
    dout, dh_n, dc_n, da_n, dcells = grads
    fgr, want = a0 is not None, c.norms >= 0
    ds_fin = none
    if dh_n is not None or da_n is not None:
        ds_fin = dh_n if dh_n is not None else s0.new_zeros(s0.shape[0], plan.Hs)
        if fgr:
            ds_fin = torch.cat([ds_fin, da_n if da_n is not None else a0.new_zeros(a0.shape)], 1)
        ds_fin = (ds_fin if plan.s_src is None else ds_fin.index_select(1, plan.s_src)).contiguous()
    out, gates, C, M = saved
    dx, ds0, dc0, dWx, dbx, dW_hh, dW_gg, dpeep, norm_h, norm_c, dW_hr = _extension().backward(
        kcell,
        plan.bounds,
        c.groups,
        x,
        s0,
        c0,
        Wx,
        W_hh,
        W_gg,
        r_src,
        a_src,
        peep,
        lens,
        out,
        gates,
        C,
        pick(dout),
        ds_fin,
        pick(dc_n),
        pick(dcells),
        want,
        list(c.tune),
        W_hr,
        M,
    )
    dh0, da0 = _state_out(ds0, plan, fgr)
    dW_ih, db_ih, db_hh = plan.unpack_grads(dWx, dbx, b_ih is not None)
    if db_hh is db_ih and db_ih is not None:  # both the kernel's one bias gradient
        db_hh = db_hh.clone()
    out = [dx, dh0, dc0, da0, dW_ih, dW_hh, db_ih, db_hh, dpeep, dW_gg, dW_hr]
    out = [x.new_empty(0) if t is None else g for t, g in zip(tensors, out, strict=True)]
    return out + [norm_h if want else x.new_empty(0), norm_c if want and tensors[2] is not None else x.new_empty(0)]


_layer_backward = torch.library.custom_op(
    "lstmlab::layer_backward", _backward_impl, mutates_args=(), device_types="cpu"
)


def _modern_backward(spec, config, lengths, tensors, saved, grads):
    """layer_backward for slstm, minlstm, mingru (csrc/modern.h; see _modern_forward)."""
    c, tensors = Config.of(config), _present(tensors)
    x, h0, _, _, W_ih, W_hh, b_ih, b_hh = tensors[:8]
    none = x.new_empty(0)
    pick = lambda t: none if t is None else t.contiguous()
    lens = none.long() if lengths is None else lengths.contiguous()
    out, K, S, _ = saved
    dout, dh_n, dc_n, da_n, _ = grads
    want = c.norms >= 0
    dx, dh0, dc0, da0, dW_ih, dW_hh, db, norm_h = _extension().modern_backward(
        *_modern_codes(spec),
        bool(c.truncate),
        x.contiguous(),
        h0.contiguous(),
        W_ih.contiguous(),
        pick(W_hh),
        lens,
        out,
        K,
        S,
        pick(dout),
        pick(dh_n),
        pick(dc_n),
        pick(da_n),
        want,
        c.tune[0],
        bool(c.tune[1]),
        c.groups,
        c.bounds[0],
        list(c.bounds[1:]),
    )
    db_hh = db.clone() if b_ih is not None else db  # two outputs may not share memory
    got = [dx, dh0, dc0, da0, dW_ih, dW_hh, db, db_hh]
    got = [x.new_empty(0) if t is None else g for t, g in zip(tensors[:8], got, strict=True)]
    return got + [x.new_empty(0) for _ in tensors[8:]] + [norm_h if want else x.new_empty(0), x.new_empty(0)]


def _backward_outputs(cell, config, tensors, new):
    """layer_backward's outputs, each new(*shape) (as _forward_outputs)."""
    x, want = tensors[0], Config.of(config).norms >= 0
    norm = lambda on: new(*x.shape[:2]) if on else new(0)
    return [new(*t.shape) for t in tensors] + [norm(want), norm(want and _spec_of(cell).kind == "lstm")]


@_layer_backward.register_fake
def _(cell, config, lengths, tensors, saved, grads):
    return _backward_outputs(cell, config, tensors, tensors[0].new_empty)


def _setup_context(ctx, inputs, output):
    cell, config, lengths, tensors = inputs
    c = Config.of(config)
    ctx.cell, ctx.config = cell, c
    ctx.record = _RUNS.get(c.norms) if c.norms >= 0 else None
    out, _, _, _, _, gates, C, M = output
    ctx.save_for_backward(lengths, *tensors, out, gates, C, M)
    ctx.mark_non_differentiable(gates, C, M)
    ctx.set_materialize_grads(False)


def _grads(ctx, grads, need):
    """The gradients of `tensors` (None where absent or not needed) from those of the
    outputs: the kernel's backward, or for a differentiable backward the reference's."""
    lengths, *given, out, gates, C, M = ctx.saved_tensors
    tensors = _present(given)
    douts, c = grads[:5], ctx.config
    # create_graph=True (a differentiable backward), or a forward that saved nothing (traced or
    # compiled under torch.no_grad, run with grad): the reference backend's run, differentiated
    if torch.is_grad_enabled() or not c.keep:
        if ctx.record is not None:
            ctx.record.fill(None, None)  # not recorded (the reference backend runs it)
        got = _reference_grads(_spec_of(ctx.cell), bool(c.truncate), bool(c.return_cells), lengths, tensors, douts)
    else:
        want = ctx.record is not None
        config = c._replace(norms=1 if want else -1).to_list()
        op = _backward_impl if _eager(given[0]) else _layer_backward
        *got, norm_h, norm_c = op(ctx.cell, config, lengths, given, [out, gates, C, M], list(douts))
        if want:
            ctx.record.fill(norm_h, norm_c if norm_c.numel() else None)
    return [g if t is not None and n else None for g, t, n in zip(got, tensors, need)]


def _backward(ctx, grads):
    need = ctx.needs_input_grad[3]
    need = need if isinstance(need, (list, tuple)) else [need] * (len(ctx.saved_tensors) - 5)  # less lengths, saved
    return None, None, None, _grads(ctx, grads, need)


torch.library.register_autograd("lstmlab::layer_forward", _backward, setup_context=_setup_context)


def _eager(x: torch.Tensor) -> bool:
    """Whether x is a plain tensor computed on: then the operators' implementations are called
    directly (torch's dispatch of a custom operator costs tens of microseconds a call);
    otherwise (torch.func's transforms, tracing, fake tensors) the operators themselves."""
    return (
        type(x) is torch.Tensor
        and not torch._C._are_functorch_transforms_active()
        and _current_dispatch_mode() is None
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


class _Layer(torch.autograd.Function):
    """layer_forward with its gradient, as run_layer calls it: the operator's own autograd
    registration (above; used when it is called directly, and by opcheck) cannot be used by
    torch.func's transforms (pytorch/pytorch#168393: the Function torch generates for it
    has no setup_context); this one can. Both save and differentiate alike."""

    generate_vmap_rule = True

    @staticmethod
    def forward(cell, config, lengths, *tensors):
        op = _forward_impl if _eager(tensors[0]) else _layer_forward
        return tuple(op(cell, config, lengths, list(tensors)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        cell, config, lengths, *tensors = inputs
        _setup_context(ctx, (cell, config, lengths, tensors), output)

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, None, *_grads(ctx, grads, ctx.needs_input_grad[3:]))


class _EagerLayer(torch.autograd.Function):
    """_Layer for plain eager calls: the same, with forward(ctx, ...) (torch binds the
    arguments of a Function with setup_context to its signature at every call, ~15 us)."""

    @staticmethod
    def forward(ctx, cell, config, lengths, *tensors):
        output = tuple(_forward_impl(cell, config, lengths, list(tensors)))
        _setup_context(ctx, (cell, config, lengths, tensors), output)
        return output

    backward = _Layer.backward


def _loop_rule(op):
    """A vmap rule: the operator once per member of the vmapped batch, outputs stacked in
    dimension 0 (the kernel has no batched form beyond its own batch dimension)."""

    def take(a, d, i):
        if isinstance(a, list):
            return [take(t, e, i) for t, e in zip(a, d if isinstance(d, list) else [d] * len(a))]
        return a if d is None or a is None else a.select(d, i)

    def rule(info, in_dims, *args):
        runs = [op(*[take(a, d, i) for a, d in zip(args, in_dims)]) for i in range(info.batch_size)]
        return [torch.stack(o) for o in zip(*runs)], [0] * len(runs[0])

    return rule


torch.library.register_vmap("lstmlab::layer_forward", _loop_rule(_layer_forward))
torch.library.register_vmap("lstmlab::layer_backward", _loop_rule(_layer_backward))


def _reference_grads(spec, truncate, return_cells, lengths, inputs, grads):
    """The gradients of one run with respect to `inputs` (x, h0, c0, a0, W_ih, W_hh, b_ih,
    b_hh, W_ch, W_gg, W_hr; None where absent), given the gradients of its outputs (out, h_n, c_n,
    a_n, cells), as a differentiable function of both: the reference backend's run from the
    same inputs, differentiated with create_graph=True."""
    x, h0, c0, a0, *weights = inputs
    state = tuple(t for t in (h0, c0, a0) if t is not None)
    if spec.kind == "slstm":  # a0 is [n0 | m0]
        state = (h0, c0, *a0.chunk(2, dim=1))
    if spec.kind in ("minlstm", "mingru"):
        weights[1] = None  # the operators' empty stand-in for the absent weight_hh
    with torch.enable_grad():
        out, final, cells = reference.run_layer(
            spec, CellParams(*weights), x, state, lengths, truncate=truncate, return_cells=return_cells
        )
    if spec.kind == "slstm":  # a_n is [n_n | m_n]
        final = (*final[:2], torch.cat(final[2:], dim=1))
    outs = [out, *final] + ([cells] if return_cells else [])
    dout, dh_n, dc_n, da_n, dcells = grads
    douts = [dout, dh_n, dc_n, da_n][: 1 + len(final)] + ([dcells] if return_cells else [])
    pairs = [(o, g) for o, g in zip(outs, douts, strict=True) if g is not None]
    wrt = [(k, t) for k, t in enumerate(inputs) if t is not None and t.requires_grad]
    got = torch.autograd.grad(
        [o for o, _ in pairs], [t for _, t in wrt], [g for _, g in pairs], create_graph=True, allow_unused=True
    )
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


def _full_lengths_as_none(lengths: torch.Tensor | None, T: int) -> torch.Tensor | None:
    """lengths as CPU int64, or None when every sequence runs all T steps."""
    if lengths is None:
        return None
    lengths = lengths.to("cpu", torch.long)
    return None if bool((lengths >= T).all()) else lengths


def run_layer(
    spec: CellSpec,
    p: CellParams,
    x: torch.Tensor,
    state: State,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    truncate: bool | None = None,
    return_cells: bool = False,
):
    """Run one layer and direction over a sequence: `reference.run_layer`'s contract.

    Args:
        x: (T, B, I). state: initial state tuple in spec.state_names order.
        lengths: (B,) valid lengths or None. reverse: run each sequence backwards.
        truncate: the 1997 truncated gradient; None takes the cell's default.
        return_cells: also return every step's c_t (LSTM cells).
        p.weight_hr: (P, H) projection (proj_size P, lstm kinds), or None: h is then
            P wide (state h (B, P), weight_hh (G*H, P), output (T, B, P)).
    Returns:
        output (T, B, H or P), final state tuple, cells (T, B, H) or None.
    """
    cell = _spec_key(spec)
    if cell not in ADMITTED:  # once per cell: the kernel computes it, else ArgumentError
        admit(spec, cell)
    truncate = spec.truncate if truncate is None else truncate
    if spec.kind in MODERN_KINDS and x.device.type == "cpu" and x.dtype in DTYPES:
        return _run_modern(spec, p, x, state, lengths, reverse, truncate)
    if p.weight_hr is not None and spec.kind != "lstm":
        raise ValueError(f"weight_hr given for cell {spec.name!r} ({spec.kind}); allowed: lstm cells only (proj_size)")
    if x.device.type != "cpu" or x.dtype not in DTYPES:
        return _fallback(
            f"{x.dtype} on {x.device} is not supported (float32/float64 on cpu)",
            spec,
            p,
            x,
            state,
            lengths,
            reverse,
            truncate,
            return_cells,
        )
    # ints also under torch.jit.trace; H from weight_hh's rows (its columns are P with projections)
    T, B, H = int(x.shape[0]), int(x.shape[1]), int(p.weight_hh.shape[0]) // len(spec.gates)
    if T == 0 or B == 0 or H == 0:  # before `tensors`, where an empty c0 would read as absent
        return _empty(spec, p, x, state, lengths, reverse, truncate, return_cells)
    lengths = _full_lengths_as_none(lengths, T)
    if reverse:
        x = reference.reverse_padded(x, lengths)
    x = reference.mask_padding(x, lengths)  # non-finite padding reaches no gradient
    lanes = _vector_bytes() // x.element_size()
    work = B * int(p.weight_hh.numel() + (p.weight_gg.numel() if p.weight_gg is not None else 0))  # multiply-adds
    tune = _current
    bounds, groups = _split(B, H, work, lanes, tune)
    if p.weight_hr is not None:  # never slices (see the module docstring): groups, or one worker
        bounds = (0, H)
    record = GradNorms._register(reverse, lengths)
    lstm, fgr = spec.kind == "lstm", spec.gate_recurrence
    tensors = [
        x,
        state[0],
        state[1] if lstm else None,
        state[2] if fgr else None,
        p.weight_ih,
        p.weight_hh,
        p.bias_ih,
        p.bias_hh,
        p.weight_ch,
        p.weight_gg,
        p.weight_hr,
    ]
    # a backward to come; a trace keeps what a backward needs (torch.jit.trace's check reruns
    # the graph without grad, and the graph must not differ)
    keep = torch.jit.is_tracing() or (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    )
    config = Config(
        int(truncate),
        groups,
        int(keep),
        int(return_cells and lstm),
        -1 if record is None else record.id,
        tuple(_tune(groups, tune)),
        tuple(bounds),
    )
    none = x.new_empty(0)
    args = (cell, config.to_list(), lengths, [none if t is None else t for t in tensors])
    if torch.jit.is_tracing() or torch.compiler.is_compiling():  # the operator itself in the graph
        out, h_n, c_n, a_n, cells, *_ = _layer_forward(*args)
    else:  # eager: through a Function (one torch.func can transform under its transforms)
        layer = _EagerLayer if _eager(x) else _Layer
        out, h_n, c_n, a_n, cells, *_ = layer.apply(*args[:3], *args[3])
    final = ((h_n, c_n, a_n) if fgr else (h_n, c_n)) if lstm else (h_n,)
    cells = cells if return_cells and lstm else None
    if reverse:
        out = reference.reverse_padded(out, lengths)
        cells = reference.reverse_padded(cells, lengths) if cells is not None else None
    return out, final, cells


def _modern_split(
    slstm: bool, T: int, B: int, H: int, dh: int, lanes: int, tune: Tuning
) -> tuple[int, int, tuple[int, ...]]:
    """How the threads share a modern cell's sequence (csrc/modern.h): (groups, workers,
    edges). slstm in groups of batch rows (groups > 1, one worker each) under the generic
    kernel's rule (`_split`: at least GROUP_MIN_ROWS rows a group, a step's recurrent product
    of at most GROUP_MAX_WORK multiply-adds): they never meet. Else the edges cut each head's
    dh units into blocks (slstm) or the H units into ranges (min cells), on whole vectors,
    for `workers` threads: slstm's blocks meet at every step, so they share a sequence from
    PARALLEL_MIN_WORK multiply-adds a step on (heads alone are blocks enough when there are
    as many as threads); the min cells' ranges never meet, and share it from 2^15
    unit-steps on. force_split: groups=n as for the generic kernel (slstm); cuts=(...) cuts
    at those fractions, one worker a block (at most the threads, at least 2)."""
    span = dh if slstm else H
    heads = H // dh if slstm else 1
    if slstm and min(tune.force_groups, B) >= 2:
        return min(tune.force_groups, B), 1, (0, span)
    if tune.force_cuts:
        edges = tuple(sorted({0, span, *(min(span, max(1, round(f * span))) for f in tune.force_cuts)}))
        return 1, min(heads * (len(edges) - 1), max(2, _threads())), edges
    threads = _threads()
    work = B * 4 * H * dh  # slstm: multiply-adds of a step's recurrent product
    groups = min(threads, B // tune.GROUP_MIN_ROWS)
    if slstm and groups >= 2 and work <= tune.GROUP_MAX_WORK:
        return groups, 1, (0, span)
    busy = work >= tune.PARALLEL_MIN_WORK if slstm else T * B * H >= 1 << 15
    if threads < 2 or not busy:
        return 1, 1, (0, span)
    parts = min(-(-threads // heads), max(1, span // lanes))
    edges = sorted({0, span, *(min(span, round(span * k / parts / lanes) * lanes) for k in range(1, parts))})
    return 1, min(threads, heads * (len(edges) - 1)), tuple(edges)


def _run_modern(spec, p, x, state, lengths, reverse, truncate):
    """run_layer for slstm, minlstm, mingru (csrc/modern.h): the same operators, with
    slstm's n and m in the a slot as [n | m], m detached (it carries no gradient, as in the
    reference step); the threads share the sequence as _modern_split says."""
    T, B, H = int(x.shape[0]), int(x.shape[1]), int(p.weight_ih.shape[0]) // len(spec.gates)
    if T == 0 or B == 0 or H == 0:
        return _empty(spec, p, x, state, lengths, reverse, truncate, False)
    lengths = _full_lengths_as_none(lengths, T)
    if reverse:
        x = reference.reverse_padded(x, lengths)
    x = reference.mask_padding(x, lengths)  # non-finite padding reaches no gradient
    record = GradNorms._register(reverse, lengths)
    slstm = spec.kind == "slstm"
    tensors = [
        x,
        state[0],
        state[1] if slstm else None,
        torch.cat([state[2], state[3].detach()], dim=1) if slstm else None,
        p.weight_ih,
        p.weight_hh,
        p.bias_ih,
        p.bias_hh,
        None,
        None,
        None,
    ]
    keep = torch.jit.is_tracing() or (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    )
    tune = _current
    dh = int(p.weight_hh.shape[1]) if slstm else H
    groups, workers, edges = _modern_split(slstm, T, B, H, dh, _vector_bytes() // x.element_size(), tune)
    config = Config(
        int(truncate),
        groups,
        int(keep),
        0,
        -1 if record is None else record.id,
        tuple(_tune(groups, tune)),
        (workers, *edges),
    )
    none = x.new_empty(0)
    args = (_spec_key(spec), config.to_list(), lengths, [none if t is None else t for t in tensors])
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        out, h_n, c_n, a_n, *_ = _layer_forward(*args)
    else:
        layer = _EagerLayer if _eager(x) else _Layer
        out, h_n, c_n, a_n, *_ = layer.apply(*args[:3], *args[3])
    final = (h_n, c_n, a_n[:, :H], a_n[:, H:].detach()) if slstm else (h_n,)
    if reverse:
        out = reference.reverse_padded(out, lengths)
    return out, final, None


def _empty(spec, p, x, state, lengths, reverse, truncate, return_cells):
    """A sequence with nothing to compute (no batch rows, no steps or no hidden units), which
    the kernel refuses: the reference loop's empty results, with their
    autograd graph (zero gradients, as torch.nn.LSTM gives for an empty batch); with no
    steps, empty outputs and the initial state as the final one."""
    T, B, _ = x.shape
    record = GradNorms._register(reverse, lengths)
    if record is not None:  # nothing reaches the backward: the norms are known now
        record.fill(x.new_zeros(T, B), x.new_zeros(T, B) if spec.kind == "lstm" else None)
    if T == 0:
        cells = x.new_zeros(0, B, state[1].shape[1]) if return_cells and spec.kind == "lstm" else None
        return x.new_zeros(0, B, state[0].shape[1]), tuple(state), cells
    return reference.run_layer(spec, p, x, state, lengths, reverse, truncate, return_cells and spec.kind == "lstm")


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
    id: int = field(default_factory=lambda: next(_IDS))  # how layer_forward's backward finds it

    def fill(self, h, c):
        if self.reverse:  # None: not recorded (a backward with create_graph=True)
            h = reference.reverse_padded(h, self.lengths) if h is not None else None
            c = reference.reverse_padded(c, self.lengths) if c is not None else None
        self.h, self.c = h, c


@dataclass
class GradNorms:
    """Opt in to per-step gradient norms from the cpu backend's backward pass.

    Every run_layer call of the cpu backend made inside the `with` block (for a
    `Recurrent`: layer 0, its reverse direction if bidirectional, layer 1, ...) is
    recorded; the backward pass, which may run after the block, fills in for each

        h[k][t, b] = ||dL/dh_t||   (over the hidden units; shape (T, B); with a
                                    projection, over h's proj_size entries)
        c[k][t, b] = ||dL/dc_t||   (LSTM cells; None for rnn and gru)

    where dL/dh_t is the whole gradient that reaches the state h_t of sequence b: from
    the output at t, from every later step and from the final state; dL/dc_t likewise is
    the total derivative with respect to c_t, through h_t = o act(c_t), the output gate's
    peephole and c_{t+1} (under the truncated rule: the truncated gradient). These are the
    gradients of the states the reference loop computes at each step (the quantities
    lstmlab.analysis.flow records through hooks). t runs in input order, also for the
    reverse direction; steps past a sequence's length are 0. The norms come out of the
    pointwise backward pass itself (no extra pass); runs outside a block cost nothing. A
    later backward through the same graph overwrites them; a backward with
    create_graph=True (run by the reference backend) sets them to None.
    """

    runs: list[RunNorms] = field(default_factory=list)

    @property
    def h(self) -> list[torch.Tensor | None]:
        return [r.h for r in self.runs]

    @property
    def c(self) -> list[torch.Tensor | None]:
        return [r.c for r in self.runs]

    def __enter__(self) -> GradNorms:
        _RECORDERS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _RECORDERS.remove(self)

    @staticmethod
    def _register(reverse: bool, lengths: torch.Tensor | None) -> RunNorms | None:
        if not _RECORDERS:
            return None
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            raise RuntimeError(
                "lstmlab.backends.cpu.GradNorms records eager runs only; a run traced or compiled "
                "(torch.jit.trace, torch.export, torch.compile) inside its block cannot fill it"
            )
        run = RunNorms(reverse, lengths)
        _RECORDERS[-1].runs.append(run)
        _RUNS[run.id] = run
        return run


_RECORDERS: list[GradNorms] = []
_RUNS: weakref.WeakValueDictionary[int, RunNorms] = weakref.WeakValueDictionary()  # by id, while their GradNorms lives
_IDS = itertools.count()
