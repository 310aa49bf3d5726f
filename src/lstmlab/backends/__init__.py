"""Backends by name. Each runs one layer and direction over a whole sequence with the
signature of `reference.run_layer`, and must match the reference forward and backward.

    reference   plain PyTorch, step by step: the specification; every cell, any device.
    cpu         the fused C++ kernel (cpu.py): the kinds it has code for, CPU tensors.
    scan        the parallel-in-time route (scan.py): minlstm and mingru only, any device.

A backend module exposes
    available() -> (bool, reason)          whether it can run at all here (never raises);
    supports(spec) -> (bool, reason)       whether it computes this CellSpec (never raises;
                                           the reference backend computes every cell);
    run_layer(spec, p, x, state, ...)      reference.run_layer's contract.
Layers find theirs with `get_backend(name, device_type, spec)`: an explicit name that is
unavailable, or that does not support the cell, raises; "auto" takes the first backend of
its preference that is available and supports the cell, and warns once per backend and cell
when it passes one over for the cell. Layers call it through `run_layer(backend, ...)`
here, which applies torch's CPU autocast rule for recurrent layers (the same on every
backend).
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import fields
from types import ModuleType

import torch

from ..errors import ArgumentError

# name -> module.
_MODULES = {"reference": f"{__name__}.reference", "cpu": f"{__name__}.cpu", "scan": f"{__name__}.scan"}
# backend="auto": the candidates in order of preference per device type (then "reference").
# CPU: the fused kernel for every cell it computes; never the scan. The scan solves
# minlstm's and mingru's linear recurrence in O(sqrt T) sequential steps, but does several
# times the elementwise passes of the sequential route (log-space gates, two levels of
# chunks, a backward scan) over (T, B, H) tensors that outgrow the caches, and a CPU with
# few cores turns fewer sequential steps into no time. Measured (BENCHMARKS.md, "The modern
# cells"; B=16, I=H=128): the fused kernel is 2-4x faster than the scan, forward + backward,
# at T = 256, 1000 and 4096, for both cells; against the reference loop the scan is
# 1.2-1.5x faster at T = 256 and 1000 but 1.3-1.4x slower at T = 4096 (one thread, CPU
# time). So on CPU it runs when asked for by name. Other devices (the kernel is CPU only):
# the scan for those two cells, whose O(sqrt T) sequential operations against the
# reference loop's O(T) are what a device with per-operation launch costs rewards (not
# measured on an accelerator: none was available to this work).
_PREFERENCE = {"cpu": ("cpu",)}
_PREFERENCE_OTHER: tuple[str, ...] = ("scan",)
# Backends that compute only a few kinds of cell: "auto" passes them over silently for the
# others (that is not a fallback worth a warning).
_SPECIALISTS = frozenset({"scan"})


def backend_names() -> list[str]:
    return list(_MODULES)


def availability() -> dict[str, tuple[bool, str]]:
    """Each backend's (available, reason): what `lstmlab doctor` reports."""
    out = {}
    for name in _MODULES:
        try:
            out[name] = importlib.import_module(_MODULES[name]).available()
        except Exception as e:  # an import failure is exactly what doctor must report
            out[name] = (False, f"import failed: {type(e).__name__}: {e}")
    return out


def get_backend(name: str, device_type: str = "cpu", spec=None) -> ModuleType:
    """The backend module for `name` ("auto" picks the fastest available one that supports
    `spec`, a CellSpec; None: any cell). An explicit name that cannot run `spec` raises
    ArgumentError naming the cell, the backend and the reason."""
    return _LOADED[_resolve(name, device_type, spec)]


# Imported backend modules by name. torch.compile and torch.export take the name chosen when
# they trace as a constant (choosing imports modules and may build the extension: not for
# tracing) and find the module here.
_LOADED: dict[str, ModuleType] = {}
# (backend, id(spec)) -> (spec, supports(spec)): keyed by identity, which costs no hash of the
# spec's fields per call (the spec is kept, so its id is not reused); and the (backend, spec)
# pairs "auto" has warned about.
_SUPPORTS: dict[tuple[str, int], tuple] = {}
_WARNED: set[tuple] = set()


def _supports(name: str, spec) -> tuple[bool, str]:
    if spec is None or name == "reference":
        return True, ""
    got = _SUPPORTS.get((name, id(spec)))
    if got is None or got[0] is not spec:
        got = _SUPPORTS[(name, id(spec))] = (spec, importlib.import_module(_MODULES[name]).supports(spec))
    return got[1]


def check_supports(name: str, spec) -> None:
    """Raise ArgumentError if backend `name` (not "auto") does not compute cell `spec`,
    naming the cell, the backend and the reason."""
    ok, why = _supports(name, spec)
    if not ok:
        raise ArgumentError(
            f"backend={name!r} cannot run cell {spec.name!r}: {why}; allowed for this cell: "
            "backend='reference' (or 'auto', which picks a backend that can)"
        )


@torch.compiler.assume_constant_result
def _resolve(name: str, device_type: str, spec=None) -> str:
    """The name of the backend get_backend returns, its module imported into _LOADED."""
    if name == "auto":
        chosen, passed = "reference", []
        for cand in _PREFERENCE.get(device_type, _PREFERENCE_OTHER):
            if spec is None and cand in _SPECIALISTS:  # any cell: only a backend that runs every cell
                continue
            ok, why = availability()[cand]
            if not ok:
                passed.append((f"lstmlab: backend {cand!r} unavailable ({why}); using ", ""))
                continue
            ok, why = _supports(cand, spec)
            if ok:
                chosen = cand
                break
            if cand not in _SPECIALISTS and (cand, spec) not in _WARNED:
                _WARNED.add((cand, spec))
                passed.append((f"lstmlab: backend {cand!r} cannot run cell {spec.name!r} ({why}); using ", " for it"))
        for before, after in passed:  # each naming the backend chosen instead
            warnings.warn(f"{before}{chosen!r}{after}", stacklevel=4)
    else:
        if name not in _MODULES:
            raise ValueError(f"backend={name!r} is not a backend; valid: 'auto', {', '.join(map(repr, _MODULES))}")
        ok, why = availability()[name]
        if not ok:
            raise RuntimeError(f"backend={name!r} is unavailable: {why}")
        check_supports(name, spec)
        chosen = name
    _LOADED[chosen] = importlib.import_module(_MODULES[chosen])
    return chosen


# ---- autocast -------------------------------------------------------------------------
# Under torch.autocast("cpu", dtype=D) (D = bfloat16 or float16) torch's recurrent layers
# run on ops of autocast's lower-precision list: torch.nn.LSTM on aten::mkldnn_rnn_layer,
# which autocast casts to D as a whole (input, weights, state: output, h_n and c_n come out
# in D); torch.nn.RNN and torch.nn.GRU step by step on aten::linear (D), so an RNN's state
# and output are D, while GRU's update (1 - z) * n + z * h with the float32 initial state
# promotes back: its output and state stay float32. With proj_size the LSTM steps on
# aten::linear too: output and h_n D, c_n float32. Autocast casts float32 (and float16)
# tensors, never float64.
#
# lstmlab follows that per kind of cell, on every backend: the matrix products' operands
# (input, every weight, initial state) rounded to D, the layer computed in float32 with
# autocast off (the kernels have no D arithmetic; accumulation in float32 is what the
# lower-precision products do too), and the results returned in D as torch's module of the
# same kind does: lstm cells output, h_n, c_n (and FGR's a_n, cells) in D (c_n float32 with
# projections); rnn cells in D; gru in float32. Gradients reach the float32 parameters
# through the casts, as under autocast.


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The lower-precision dtype autocast casts x to in a recurrent layer, or None."""
    device = x.device.type
    if device != "cpu" or not torch.is_autocast_enabled(device):
        return None
    if not x.is_floating_point() or x.dtype == torch.float64:
        return None
    return torch.get_autocast_dtype(device)


def run_layer(
    backend: ModuleType,
    spec,
    p,
    x: torch.Tensor,
    state,
    lengths=None,
    reverse: bool = False,
    truncate: bool | None = None,
    return_cells: bool = False,
    **kw,
):
    """`backend.run_layer(spec, p, x, state, ...)` (see reference.run_layer), under CPU
    autocast by torch's rule for recurrent layers (above); otherwise exactly that call."""
    low = _autocast_dtype(x)
    if low is None:
        return backend.run_layer(
            spec, p, x, state, lengths, reverse=reverse, truncate=truncate, return_cells=return_cells, **kw
        )
    f32 = torch.float32
    rounded = lambda t: None if t is None else t.to(low).to(f32)
    p32 = type(p)(*(rounded(getattr(p, f.name)) for f in fields(p)))
    with torch.autocast("cpu", enabled=False):
        out, final, cells = backend.run_layer(
            spec,
            p32,
            rounded(x),
            tuple(rounded(s) for s in state),
            lengths,
            reverse=reverse,
            truncate=truncate,
            return_cells=return_cells,
            **kw,
        )
    if spec.kind == "gru":
        return out, final, cells
    c_dtype = f32 if getattr(p, "weight_hr", None) is not None else low  # torch's LSTM with projections
    final = tuple(s.to(c_dtype if name == "c" else low) for name, s in zip(spec.state_names, final))
    return out.to(low), final, None if cells is None else cells.to(low)
