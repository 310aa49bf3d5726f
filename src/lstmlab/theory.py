"""The one-dimensional picture, in closed form (Hochreiter 1991; Hochreiter & Schmidhuber 1997;
Pascanu, Mikolov & Bengio 2013).

A 1-D RNN h_t = a(w h_{t-1}) carries error back one step with the factor
dh_t/dh_{t-1} = w a'(w h_{t-1}); over a lag the factors multiply. For the logistic sigmoid
and tanh, |w a'(w h)| has a finite maximum over w for each h != 0, reached at w* = u*/h
where u* solves a fixed equation (w* determined up to sign), so the product cannot be held near 1 for all steps: it
shrinks or grows exponentially. The LSTM cell state carries error back with the factor
sigma(v) of its forget-gate input v, which a large v holds as near 1 as one likes; the
1997 cell (no forget gate) has the factor 1 exactly.

The modern cells (issue #13), each with its gates of the input alone in one dimension (for
minlstm and mingru that is the cell itself: their gates never see h): minGRU carries h with
1 - z, minLSTM with f' = f / (f + i), both in (0, 1). sLSTM carries its stabilised c and n
with f' <= 1, while what h sees, the normalised c / n, has the factor
f' n_{t-1} / n_t in (0, 1) (see slstm_factor and slstm_ratio_factor).
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


def _log_sigmoid(v):
    return -torch.nn.functional.softplus(-v)


def minlstm_factor(f_input, i_input):
    """minLSTM's dh_t/dh_{t-1} = f' = f / (f + i), f = sigma(f_input), i = sigma(i_input)
    (float or tensor, broadcast), in (0, 1). Exact, not a truncation: the gates see x_t alone,
    so no error reaches h_{t-1} through them (the path the 1997 rule cuts does not exist)."""
    scalar = not isinstance(f_input, torch.Tensor) and not isinstance(i_input, torch.Tensor)
    out = torch.sigmoid(_log_sigmoid(_as_tensor(f_input)) - _log_sigmoid(_as_tensor(i_input)))
    return out.item() if scalar else out


def mingru_factor(z_input):
    """minGRU's dh_t/dh_{t-1} = 1 - z = sigma(-z_input), in (0, 1); exact, as minlstm_factor."""
    scalar = not isinstance(z_input, torch.Tensor)
    out = torch.sigmoid(-_as_tensor(z_input))
    return out.item() if scalar else out


def _slstm_gates(f_input, i_input, m_prev, forget_activation):
    if forget_activation not in ("sigmoid", "exp"):
        raise ValueError(f"forget_activation={forget_activation!r} is not supported; allowed: ('sigmoid', 'exp')")
    k_f, log_i, m_prev = _as_tensor(f_input), _as_tensor(i_input), _as_tensor(m_prev)
    log_f = _log_sigmoid(k_f) if forget_activation == "sigmoid" else k_f
    m = torch.maximum(log_f + m_prev, log_i)
    return torch.exp(log_f + m_prev - m), torch.exp(log_i - m)  # f', i'


def slstm_factor(f_input, i_input, m_prev, forget_activation: str = "sigmoid"):
    """sLSTM's dc_t/dc_{t-1} = dn_t/dn_{t-1} = f' with the stabiliser held fixed (as the
    backward holds it): f' = exp(log f + m_{t-1} - m_t), m_t = max(log f + m_{t-1}, log i),
    log i = i_input, log f = logsigmoid(f_input) or f_input ("exp").

    f' <= 1 always, since m_t >= log f + m_{t-1}; it is exactly 1 whenever the forget branch
    wins the max (log f + m_{t-1} >= log i), whatever f. The paper's unstabilised state
    c~ = c exp(m_t) is carried with f itself, which the exponential forget gate makes > 1
    for f_input > 0: c~ and n~ may grow without bound, the stabilised c and n do not.
    Neither is what h = o c / n sees: see slstm_ratio_factor. Floats or tensors, broadcast.
    """
    scalar = not any(isinstance(v, torch.Tensor) for v in (f_input, i_input, m_prev))
    out = _slstm_gates(f_input, i_input, m_prev, forget_activation)[0]
    return out.item() if scalar else out


def slstm_ratio_factor(f_input, i_input, n_prev, m_prev, forget_activation: str = "sigmoid"):
    """The 1-D factor of what h sees in an sLSTM: r_t = c_t / n_t (h_t = o_t r_t) is the
    running average r_t = lam r_{t-1} + (1 - lam) z_t with

        lam = d r_t / d r_{t-1} = f' n_{t-1} / n_t = f' n_{t-1} / (f' n_{t-1} + i')
            = f n~_{t-1} / (f n~_{t-1} + i)   (unstabilised: the stabiliser cancels),

    (the derivative through c_{t-1} at fixed n_{t-1}: the error that reaches h_t from an
    earlier h, gates of the input alone). lam is in (0, 1): it is below 1 whatever f (also
    an exponential forget gate above 1), since the new input always takes the share
    i' / n_t > 0. It is minLSTM's f / (f + i) with f weighted by the normaliser so far: with
    constant gates and f < 1, n~ tends to i / (1 - f) and lam to f; with f = 1, n~_t = t i and
    lam = (t - 1) / t (the error decays like 1 / lag, not exponentially); with f > 1, lam tends
    to 1 geometrically and the product converges: old error is kept, new input counts less
    and less. Over lags: prod lam = prod f' n_t / n_T, so d h_T / d c_t = o_T prod(lam) / n_t.

    Args: the gates' pre-activations f_input and i_input (= log i), the previous stabilised
    normaliser n_prev (> 0, or 0 at the first step: lam = 0) and stabiliser m_prev (-inf at
    the first step). Floats or tensors, broadcast. Returns lam.
    """
    scalar = not any(isinstance(v, torch.Tensor) for v in (f_input, i_input, n_prev, m_prev))
    f, i = _slstm_gates(f_input, i_input, m_prev, forget_activation)
    carried = f * _as_tensor(n_prev)
    out = carried / (carried + i)
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
