"""Variant studies at any scale: random or TPE search over Greff et al.'s space on Optuna,
a SQLite file on one machine or a shared PostgreSQL for many, and their report."""
from .report import summarize, write_sweep_report
from .run import GREFF_CELLS, SweepConfig, run_sweep, work
from .space import SearchSpace

__all__ = ["GREFF_CELLS", "SearchSpace", "SweepConfig", "run_sweep", "summarize", "work", "write_sweep_report"]
