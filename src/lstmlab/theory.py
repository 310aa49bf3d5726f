"""The one-dimensional picture, in closed form (Hochreiter 1991; Hochreiter & Schmidhuber 1997;
Pascanu, Mikolov & Bengio 2013).

A 1-D RNN h_t = a(w h_{t-1}) carries error back one step with the factor
dh_t/dh_{t-1} = w a'(w h_{t-1}); over a lag the factors multiply. For the logistic sigmoid
and tanh, |w a'(w h)| has a finite maximum over w for each h != 0, reached at w* = u*/h
where u* solves a fixed equation (w* determined up to sign), so the product cannot be held near 1 for all steps: it
shrinks or grows exponentially. The LSTM cell state carries error back with the factor
sigma(v) of its forget-gate input v, which a large v holds as near 1 as one likes; the
1997 cell (no forget gate) has the factor 1 exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .cells import ACTIVATIONS

# The activations of lstmlab.cells.ACTIVATIONS this picture is worked out for (the
# maximum of |u a'(u)| below is solved for sigmoid and tanh; relu's factor is w itself).
RNN_ACTIVATIONS = ("sigmoid", "tanh", "relu")


def _check_activation(activation):
    if activation not in RNN_ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not supported; allowed: {RNN_ACTIVATIONS}")


def _derivative(u, activation):
    return ACTIVATIONS[activation].grad(u)


def _as_tensor(x):
    return torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x


def rnn_factor(w, h, activation: str = "sigmoid"):
    """The per-step factor w a'(w h) of the 1-D RNN h_t = a(w h_{t-1}).

    Args:
        w: the recurrent weight (float or tensor). h: the previous activation h_{t-1}.
        activation: "sigmoid", "tanh" or "relu".
    Returns:
        dh_t/dh_{t-1}, broadcast over w and h; a float if both were floats.
    """
    _check_activation(activation)
    scalar = not isinstance(w, torch.Tensor) and not isinstance(h, torch.Tensor)
    w, h = _as_tensor(w), _as_tensor(h)
    out = w * _derivative(w * h, activation)
    return out.item() if scalar else out


def _u_star(activation: str) -> tuple[float, float]:
    """The u > 0 maximising u a'(u), and that maximum, by Newton's method on the
    stationarity condition (sigmoid: u tanh(u/2) = 1; tanh: 2 u tanh(u) = 1)."""
    if activation == "sigmoid":
        F = lambda u: u * math.tanh(u / 2) - 1
        dF = lambda u: math.tanh(u / 2) + u / (2 * math.cosh(u / 2) ** 2)
        u = 1.5
    else:
        F = lambda u: 2 * u * math.tanh(u) - 1
        dF = lambda u: 2 * math.tanh(u) + 2 * u / math.cosh(u) ** 2
        u = 0.77
    for _ in range(50):
        step = F(u) / dF(u)
        u -= step
        if abs(step) < 1e-16:
            break
    return u, u * float(_derivative(torch.tensor(u, dtype=torch.float64), activation))


def max_rnn_factor(h: float, activation: str = "sigmoid") -> tuple[float, float]:
    """The largest |w a'(w h)| over all weights w, for a given previous activation h.

    Returns (w_star, factor). For sigmoid the maximum is 0.2239/|h| at |w*| = 1.5434/|h|;
    for tanh 0.4477/|h| at |w*| = 0.7717/|h|: error is carried on undiminished only while
    the activation stays small, which the same weight prevents. |w a'(w h)| is even in w
    for these two; w_star is the positive one, which makes the factor positive. ReLU's factor is w itself on
    the active side, unbounded: (inf, inf) for h != 0; (0.0, 0.0) at h = 0. For sigmoid
    and tanh at h = 0 the factor w a'(0) is unbounded: (inf, inf).
    """
    _check_activation(activation)
    h = float(h)
    if activation == "relu":
        return (math.copysign(math.inf, h), math.inf) if h != 0 else (0.0, 0.0)
    if h == 0:
        return math.inf, math.inf
    u, m = _u_star(activation)
    return u / abs(h), m / abs(h)


def lstm_factor(v):
    """The LSTM cell-state factor dc_t/dc_{t-1} = sigma(v) along the Constant Error
    Carousel, for forget-gate input v (float or tensor). Without a forget gate it is 1."""
    scalar = not isinstance(v, torch.Tensor)
    out = torch.sigmoid(_as_tensor(v))
    return out.item() if scalar else out


def lag_product(factor: float, lag: int) -> float:
    """|factor|^lag: how much of the error a constant per-step factor carries over `lag`
    steps (inf where the float overflows: the error grows without bound)."""
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
        raise ValueError(f"lag={lag!r} is invalid; allowed: an int >= 0")
    try:
        return abs(float(factor)) ** lag
    except OverflowError:
        return math.inf


def horizon(factor: float | Sequence[float] | torch.Tensor, tol: float) -> float:
    """The lag n after which a product of per-step factors first falls below tol.

    For a constant factor f: the smallest n with |f|^n < tol (inf if |f| >= 1, 0 if
    tol > 1). For a sequence of factors f_1, f_2, ...: the smallest n with
    |f_1 ... f_n| < tol, or inf if the sequence ends first.
    """
    if not 0 < tol:
        raise ValueError(f"tol={tol!r} is invalid; allowed: a number > 0")
    if tol > 1:
        return 0
    f = _as_tensor(factor).abs().to(torch.float64)
    if f.dim() == 0:
        f = float(f)
        if f >= 1:
            return math.inf
        if f == 0:
            return 1
        n = max(1, math.floor(math.log(tol) / math.log(f)) + 1)
        while n > 1 and f ** (n - 1) < tol:  # guard the floor against rounding
            n -= 1
        while f**n >= tol:
            n += 1
        return n
    logs = torch.cumsum(torch.log(f), 0)
    below = torch.nonzero(logs < math.log(tol))
    return int(below[0]) + 1 if len(below) else math.inf
