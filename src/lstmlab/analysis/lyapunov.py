"""Lyapunov exponents of the backward dynamics, by the QR (Benettin) method.

Backpropagation multiplies the error by J_t^T at every step. Starting from k orthonormal
error directions at the last step and re-orthonormalising after each J_t^T, the mean log
growth of each direction converges to the Lyapunov exponents of the product. The largest
exponent lambda_1 is the rate at which error decays per step (if negative); the memory
horizon is the lag over which the gradient falls by a factor e (1 / |lambda_1|) or 1e-6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .jacobians import step_jacobians


@dataclass
class Lyapunov:
    """exponents: (B, k), descending, per step (natural log); mean: (k,) over the batch."""

    exponents: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.exponents.mean(0)

    @property
    def decay_rate(self) -> float:
        """-lambda_1: the per-step exponential decay rate of the slowest-decaying error."""
        return -float(self.mean[0])

    def horizon(self, factor: float = math.e) -> float:
        """Steps until the gradient falls by `factor` at the rate lambda_1 (inf if it
        does not decay)."""
        rate = self.decay_rate
        return math.log(factor) / rate if rate > 0 else math.inf

    @property
    def horizon_e(self) -> float:
        return self.horizon(math.e)

    @property
    def horizon_1e6(self) -> float:
        return self.horizon(1e6)


def lyapunov_from_jacobians(J: torch.Tensor, k: int | None = None, warmup: int = 0) -> Lyapunov:
    """The top-k (or full, k=None) Lyapunov spectrum of the backward product of J (T, B, S, S).

    warmup: the first `warmup` backward steps (from the last step t = T) orient the error
    directions but are not counted; the exponents average over the remaining T - warmup.
    A few steps remove the transient of the arbitrary starting directions (O(1/T) otherwise).
    """
    T, B, S, _ = J.shape
    k = S if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= S:
        raise ValueError(f"k={k!r} is invalid; allowed: an int in [1, {S}] (the state size) or None")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < T:
        raise ValueError(f"warmup={warmup!r} is invalid; allowed: an int in [0, {T - 1}] (T - 1 steps)")
    Q = torch.eye(S, k, dtype=J.dtype).expand(B, S, k).clone()
    total = torch.zeros(B, k, dtype=J.dtype)
    with torch.no_grad():
        for t in range(T - 1, -1, -1):
            Q, R = torch.linalg.qr(J[t].mT @ Q)
            if T - 1 - t >= warmup:
                total += torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
    return Lyapunov(torch.sort(total / (T - warmup), dim=-1, descending=True).values)


def lyapunov(model, x, k: int | None = None, hx=None, layer: int = 0, direction: int = 0, warmup: int = 0) -> Lyapunov:
    """Lyapunov exponents of the backward dynamics of `model` driven by input x.

    Args:
        model: a lstmlab.Recurrent. x: its input. k: how many exponents (None: all S).
        warmup: backward steps not counted (see lyapunov_from_jacobians).
    Returns:
        Lyapunov (exponents per batch element, mean, decay rate, horizons).
    """
    return lyapunov_from_jacobians(step_jacobians(model, x, hx, layer, direction), k, warmup)
