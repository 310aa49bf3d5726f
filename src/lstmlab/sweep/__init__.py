"""Variant studies at any scale: random or TPE search over Greff et al.'s space on Optuna,
a SQLite file on one machine or a shared PostgreSQL for many, and their report.

Optuna is imported on first use of run_sweep / work / summarize / write_sweep_report.
"""

import importlib

from .config import GREFF_CELLS, SweepConfig
from .space import SearchSpace

_LAZY = {"run_sweep": ".run", "work": ".run", "summarize": ".report", "write_sweep_report": ".report"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GREFF_CELLS", "SearchSpace", "SweepConfig", "run_sweep", "summarize", "work", "write_sweep_report"]
