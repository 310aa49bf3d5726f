"""The closed-form 1-D theory against autograd and a dense numerical search."""

import math

import pytest
import torch

from conftest import approx, assert_close
from lstmlab import theory

DT = torch.float64


@pytest.mark.parametrize("activation,fn", [("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("relu", torch.relu)])
def test_rnn_factor_is_the_autograd_derivative(activation, fn):
    g = torch.Generator().manual_seed(0)
    w = 4 * torch.randn(200, generator=g, dtype=DT)
    h = torch.randn(200, generator=g, dtype=DT).requires_grad_()
    (d,) = torch.autograd.grad(fn(w * h).sum(), h)
    assert_close(theory.rnn_factor(w, h.detach(), activation), d, tol="float64_closed_form")
    assert isinstance(theory.rnn_factor(2.0, 0.3, activation), float)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
@pytest.mark.parametrize("h", [0.05, 0.3, -0.7, 1.0])
def test_max_rnn_factor_against_dense_search(activation, h):
    w_star, best = theory.max_rnn_factor(h, activation)
    w = torch.linspace(-200, 200, 4_000_001, dtype=DT)
    vals = theory.rnn_factor(w, h, activation).abs()
    i = int(vals.argmax())
    assert best == approx(float(vals[i]), "dense_search")
    assert abs(w_star) == pytest.approx(abs(float(w[i])), abs=2 * float(w[1] - w[0]))  # even in w; two grid steps
    assert theory.rnn_factor(w_star, h, activation) == approx(best, "float64_closed_form")  # positive
    assert best >= float(vals.max())  # no weight does better


def test_max_rnn_factor_constants_and_edge_cases():
    # the constants are written to five decimals
    assert theory.max_rnn_factor(1.0, "sigmoid")[1] == pytest.approx(0.22387, abs=1e-5)
    assert theory.max_rnn_factor(1.0, "tanh")[1] == pytest.approx(0.44774, abs=1e-5)
    assert theory.max_rnn_factor(0.5, "relu") == (math.inf, math.inf)
    assert theory.max_rnn_factor(0.0, "relu") == (0.0, 0.0)
    assert theory.max_rnn_factor(0.0, "tanh") == (math.inf, math.inf)
    with pytest.raises(ValueError, match=r"activation='gelu' is not supported; allowed: \('sigmoid', 'tanh', 'relu'\)"):
        theory.max_rnn_factor(1.0, "gelu")


def test_lstm_factor_is_the_cec_derivative():
    """dc_t/dc_{t-1} of c_t = f c_{t-1} + i g, holding the gates, with f = sigma(v)."""
    v = torch.linspace(-6, 6, 25, dtype=DT)
    c = torch.randn(25, dtype=DT, requires_grad=True)
    i, g = torch.rand(25, dtype=DT), torch.randn(25, dtype=DT)
    (d,) = torch.autograd.grad((torch.sigmoid(v) * c + i * g).sum(), c)
    torch.testing.assert_close(theory.lstm_factor(v), d)
    assert theory.lstm_factor(0.0) == 0.5


def test_horizon():
    assert theory.horizon(0.5, 0.25) == 3  # 0.5^2 = 0.25 is not below 0.25
    assert theory.horizon(0.5, 0.2) == 3
    assert theory.horizon(-0.5, 0.2) == 3
    assert theory.horizon(1.0, 1e-6) == math.inf
    assert theory.horizon(0.0, 1e-6) == 1
    f = theory.lstm_factor(3.0)
    n = theory.horizon(f, 1e-6)
    assert f**n < 1e-6 <= f ** (n - 1)
    # a sequence of factors: the first n where the running product is below tol
    seq = [0.9, 0.5, 1.0, 0.1, 0.9]  # running products 0.9, 0.45, 0.45, 0.045, 0.0405
    assert theory.horizon(seq, 0.5) == 2 and theory.horizon(seq, 0.3) == 4
    assert theory.horizon(seq, 0.041) == 5 and theory.horizon(seq, 0.04) == math.inf
    with pytest.raises(ValueError, match=r"tol=0 is invalid"):
        theory.horizon(0.5, 0)


def test_lag_product():
    from lstmlab.theory import lag_product

    assert lag_product(-0.5, 3) == 0.125 and lag_product(0.9, 0) == 1.0
    assert lag_product(2.0, 2000) == math.inf  # overflow: the error grows without bound
    with pytest.raises(ValueError, match=r"lag=-1 is invalid; allowed: an int >= 0"):
        lag_product(0.5, -1)
