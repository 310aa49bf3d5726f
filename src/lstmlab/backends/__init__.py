"""Backends by name. Each runs one layer and direction over a whole sequence with the
signature of `reference.run_layer`, and must match the reference forward and backward.

A backend module exposes `available() -> (bool, reason)` and `run_layer(...)`.
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch

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
    return _LOADED[_resolve(name, device_type)]


# Imported backend modules by name. torch.compile and torch.export take the name chosen when
# they trace as a constant (choosing imports modules and may build the extension: not for
# tracing) and find the module here.
_LOADED: dict[str, ModuleType] = {}


@torch.compiler.assume_constant_result
def _resolve(name: str, device_type: str) -> str:
    """The name of the backend get_backend returns, its module imported into _LOADED."""
    if name == "auto":
        chosen = "reference"
        for cand in (_PREFERENCE_CPU if device_type == "cpu" else ()):
            ok, why = availability()[cand]
            if ok:
                chosen = cand
                break
            warnings.warn(f"lstmlab: backend {cand!r} unavailable ({why}); using 'reference'", stacklevel=4)
    else:
        if name not in _MODULES:
            raise ValueError(f"backend={name!r} is not a backend; valid: 'auto', {', '.join(map(repr, _MODULES))}")
        ok, why = availability()[name]
        if not ok:
            raise RuntimeError(f"backend={name!r} is unavailable: {why}")
        chosen = name
    _LOADED[chosen] = importlib.import_module(_MODULES[chosen])
    return chosen
