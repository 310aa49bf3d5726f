"""Instruments that measure how error flows back through time, for any registered cell."""

from .flow import GradientFlow, gradient_flow
from .jacobians import Run, record, step_jacobians
from .lag import LagNorms, by_lag, lag_jacobians
from .lyapunov import Lyapunov, lyapunov, lyapunov_from_jacobians

__all__ = [
    "GradientFlow",
    "LagNorms",
    "Lyapunov",
    "Run",
    "by_lag",
    "gradient_flow",
    "lag_jacobians",
    "lyapunov",
    "lyapunov_from_jacobians",
    "record",
    "step_jacobians",
]
