"""The closed-form 1-D theory against autograd and a dense numerical search."""

import math

import pytest
import torch

import lstmlab
from conftest import approx, assert_close
from lstmlab import theory
from lstmlab.backends import reference
from lstmlab.backends.reference import CellParams

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


# ---- the modern cells in one dimension (issue #13) ----------------------------------------
def one_d(cell, **kw):
    """A 1-D cell whose pre-activations are its input: weight_ih the identity (G x G), no
    bias, weight_hh zero (slstm): gates of the input alone, as the 1-D picture assumes."""
    spec = lstmlab.Recurrent(1, 1, cell=cell, dtype=DT, **kw).spec
    G = len(spec.gates)
    w_hh = torch.zeros(G, 1, dtype=DT) if spec.recurrent_weights else None
    return spec, CellParams(weight_ih=torch.eye(G, dtype=DT), weight_hh=w_hh)


def pre_activations(n, G, seed=0, scale=4.0):
    return scale * torch.randn(n, G, dtype=DT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cell", ["minlstm", "mingru"])
def test_min_cell_factors_are_the_autograd_derivative_of_the_step(cell):
    spec, p = one_d(cell)
    k = pre_activations(300, len(spec.gates))
    h = torch.randn(300, 1, dtype=DT, requires_grad=True)
    (d,) = torch.autograd.grad(reference.step(spec, p, k, (h,))[0].sum(), h)
    want = theory.minlstm_factor(k[:, 0], k[:, 1]) if cell == "minlstm" else theory.mingru_factor(k[:, 0])
    assert_close(want, d[:, 0], tol="float64_closed_form")
    assert ((want > 0) & (want < 1)).all()
    assert theory.mingru_factor(0.0) == 0.5 and theory.minlstm_factor(2.0, 2.0) == 0.5


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_slstm_factor_is_the_stabilised_carry_and_at_most_one(forget):
    spec, p = one_d("slstm", forget_activation=forget)
    k = pre_activations(400, 4, seed=1)
    m_prev = 3 * torch.randn(400, 1, dtype=DT, generator=torch.Generator().manual_seed(2))
    c = torch.randn(400, 1, dtype=DT, requires_grad=True)
    n = torch.rand(400, 1, dtype=DT) + 1
    new = reference.step(spec, p, k, (torch.zeros_like(n), c, n, m_prev))
    (d,) = torch.autograd.grad(new[1].sum(), c)
    f = theory.slstm_factor(k[:, 1], k[:, 0], m_prev[:, 0], forget)
    assert_close(f, d[:, 0], tol="float64_closed_form")
    assert (f <= 1).all() and (f == 1).any()  # 1 where the forget branch wins the max
    if forget == "exp":  # the paper's unstabilised carry exp(k_f) exceeds 1 there
        assert (torch.exp(k[:, 1]) > 1).any()
    assert theory.slstm_factor(0.0, 0.0, float("-inf")) == 0.0  # the first step forgets c_0


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_slstm_ratio_factor_is_the_derivative_of_c_over_n(forget):
    """d r_t / d r_{t-1} for r = c / n, through c_{t-1} at fixed n_{t-1}, by autograd."""
    spec, p = one_d("slstm", forget_activation=forget)
    k = pre_activations(400, 4, seed=3)
    m_prev = 3 * torch.randn(400, 1, dtype=DT, generator=torch.Generator().manual_seed(4))
    n = torch.rand(400, 1, dtype=DT) + 1
    r = torch.randn(400, 1, dtype=DT, requires_grad=True)
    new = reference.step(spec, p, k, (torch.zeros_like(n), r * n, n, m_prev))
    (d,) = torch.autograd.grad((new[1] / new[2]).sum(), r)
    lam = theory.slstm_ratio_factor(k[:, 1], k[:, 0], n[:, 0], m_prev[:, 0], forget)
    assert_close(lam, d[:, 0], tol="float64_closed_form")
    assert ((lam > 0) & (lam < 1)).all()


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_slstm_ratio_factors_multiply_to_the_gradient_of_h_over_a_lag(forget):
    """d h_T / d c_t = o_T prod_{k > t} lam_k / n_t, autograd over a 1-D run of 30 steps."""
    spec, p = one_d("slstm", forget_activation=forget)
    T = 30
    k = pre_activations(T, 4, seed=5, scale=2.0).unsqueeze(1)  # (T, 1, 4)
    h, c, n, m = reference.zero_state(spec, 1, 1, k)
    state = (h, c.requires_grad_(), n, m)  # c_0 enters with the factor 0; every c_t is in the graph
    states = [state]
    for t in range(T):
        state = reference.step(spec, p, k[t], state)
        states.append(state)
    cs = [s[1] for s in states[1:]]
    grads = torch.autograd.grad(state[0].sum(), cs)
    n_prev, m_prev = (torch.cat([s[j] for s in states[:-1]])[:, 0] for j in (2, 3))  # (T,) entering each step
    lam = theory.slstm_ratio_factor(k[:, 0, 1], k[:, 0, 0], n_prev, m_prev, forget)
    o_T = torch.sigmoid(k[-1, 0, 3])
    want = torch.stack([o_T * lam[t + 1 :].prod() / states[t + 1][2][0, 0] for t in range(T)])
    assert_close(torch.cat(grads)[:, 0], want, tol="float64_closed_form")


def test_slstm_ratio_factor_with_forget_gate_one_is_t_minus_one_over_t():
    """Exponential forget gate with f_input = 0 (f = 1) and a constant input gate:
    n~_t = t i, so lam_t = (t - 1) / t: the error decays like 1 / lag, not exponentially."""
    spec, p = one_d("slstm", forget_activation="exp")
    T = 12
    k = torch.tensor([0.7, 0.0, 0.3, 0.1], dtype=DT).expand(T, 1, 4)
    state = reference.zero_state(spec, 1, 1, k)
    lam = []
    for t in range(T):
        lam.append(theory.slstm_ratio_factor(0.0, 0.7, float(state[2]), float(state[3]), "exp"))
        state = reference.step(spec, p, k[t], state)
    t = torch.arange(1, T + 1, dtype=DT)
    assert_close(torch.tensor(lam, dtype=DT), (t - 1) / t, tol="float64_closed_form")
    with pytest.raises(ValueError, match=r"forget_activation='tanh' is not supported"):
        theory.slstm_factor(0.0, 0.0, 0.0, "tanh")
