"""Backends by name. Each runs one layer and direction over a whole sequence with the
signature of `reference.run_layer`, and must match the reference forward and backward.

A backend module exposes `available() -> (bool, reason)` and `run_layer(...)`.
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

# name -> module, in order of preference for backend="auto" on CPU.
_MODULES = {"reference": f"{__name__}.reference", "cpu": f"{__name__}.cpu"}
_PREFERENCE_CPU: tuple[str, ...] = ("cpu", "reference")


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


def get_backend(name: str, device_type: str = "cpu") -> ModuleType:
    """The backend module for `name` ("auto" picks the fastest available one)."""
    if name == "auto":
        for cand in (_PREFERENCE_CPU if device_type == "cpu" else ()):
            ok, why = availability()[cand]
            if ok:
                return importlib.import_module(_MODULES[cand])
            warnings.warn(f"lstmlab: backend {cand!r} unavailable ({why}); using 'reference'", stacklevel=3)
        return importlib.import_module(_MODULES["reference"])
    if name not in _MODULES:
        raise ValueError(f"backend={name!r} is not a backend; valid: 'auto', {', '.join(map(repr, _MODULES))}")
    ok, why = availability()[name]
    if not ok:
        raise RuntimeError(f"backend={name!r} is unavailable: {why}")
    return importlib.import_module(_MODULES[name])
