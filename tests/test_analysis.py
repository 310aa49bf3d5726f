"""Gradient-flow instruments against autograd and against exact answers."""

import math

import pytest
import torch

import lstmlab
from conftest import approx, assert_close
from lstmlab.analysis import gradient_flow, lag_jacobians, lyapunov, lyapunov_from_jacobians, record, step_jacobians
from lstmlab.analysis.jacobians import CLOSED_FORM_KINDS
from lstmlab.backends import reference
from lstmlab.cells import ACTIVATIONS

DT = torch.float64
I, H, B, T = 3, 4, 2, 6


def model(cell, seed=0, **kw):
    torch.manual_seed(seed)
    return lstmlab.Recurrent(I, H, cell=cell, dtype=DT, **kw)


def autograd_step_jacobians(m, x, layer=0, direction=0):
    """d s_t / d s_{t-1} by autograd, one step and batch element at a time."""
    run = record(m, x, layer=layer, direction=direction)
    p = m.cell_params(layer, direction)
    layer_in = x
    if layer > 0:  # the input of layer k is the output of the layers below
        below = lstmlab.Recurrent(I, H, cell=m.spec, num_layers=layer, dtype=DT, truncate=m.truncate)
        below.load_state_dict({k: v for k, v in m.state_dict().items() if int(k.split("_l")[1][0]) < layer})
        layer_in = below(x)[0]
    if direction == 1:
        layer_in = layer_in.flip(0)
    Tn, Bn = layer_in.shape[:2]
    out = []
    for t in range(Tn):
        row = []
        for b in range(Bn):
            prev = [s[t, b] for s in run.prev]
            sizes = [v.numel() for v in prev]

            def f(flat, t=t, b=b, sizes=sizes):
                st = tuple(v.unsqueeze(0) for v in flat.split(sizes))
                new = reference.step(m.spec, p, layer_in[t, b : b + 1], st, truncate=m.truncate)
                return torch.cat([n[0] for n in new])

            row.append(torch.autograd.functional.jacobian(f, torch.cat(prev)))
        out.append(torch.stack(row))
    return torch.stack(out)


def lstm_truncations(cell):
    return [None, False, True] if lstmlab.get_cell(cell).kind == "lstm" else [None]


# every cell whose state is all error-carrying (slstm's stabiliser m is held fixed, which the
# helper above does not do: tests/test_modern_instruments.py)
CLOSED_FORM_CELLS = [c for c in lstmlab.cell_names() if lstmlab.get_cell(c).kind in CLOSED_FORM_KINDS]
CLOSED_FORM_CELLS = [c for c in CLOSED_FORM_CELLS if lstmlab.get_cell(c).kind != "slstm"]


@pytest.mark.parametrize("cell,truncate", [(c, t) for c in CLOSED_FORM_CELLS for t in lstm_truncations(c)])
def test_step_jacobians_equal_autograd(cell, truncate):
    m = model(cell, truncate=truncate)
    x = torch.randn(T, B, I, dtype=DT, generator=torch.Generator().manual_seed(1))
    J = step_jacobians(m, x)
    S = H * sum(m.spec.state_width(n) for n in m.spec.state_names)
    assert J.shape == (T, B, S, S)
    assert_close(J, autograd_step_jacobians(m, x), tol="jacobian")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize(
    "cell,field", [("rnn-tanh", "activation"), ("lstm", "activation"), ("lstm", "output_activation")]
)
def test_step_jacobians_equal_autograd_for_every_activation(name, cell, field):
    """The closed forms read each activation's `grad` from the one table; the registered
    cells use only some of them in each place."""
    m = model(cell, **{field: name})
    assert getattr(m.spec, field) == name
    x = 2 * torch.randn(T, B, I, dtype=DT, generator=torch.Generator().manual_seed(2))
    assert_close(step_jacobians(m, x), autograd_step_jacobians(m, x), tol="jacobian")


@pytest.mark.parametrize("cell", ["vanilla", "gru"])
def test_step_jacobians_of_upper_layer_and_reverse_direction(cell):
    m = model(cell, num_layers=2, bidirectional=False)
    x = torch.randn(T, B, I, dtype=DT)
    assert_close(step_jacobians(m, x, layer=1), autograd_step_jacobians(m, x, layer=1), tol="jacobian")
    m = model(cell, bidirectional=True)
    assert_close(step_jacobians(m, x, direction=1), autograd_step_jacobians(m, x, direction=1), tol="jacobian")


def test_lyapunov_of_a_linear_diagonal_rnn_is_log_abs_a():
    a = torch.tensor([1.1, 0.9, -0.5, 0.2, -0.05], dtype=DT)
    m = lstmlab.Recurrent(2, 5, cell="rnn-tanh", activation="identity", dtype=DT)
    with torch.no_grad():
        m.weight_hh_l0.copy_(torch.diag(a))
    L = lyapunov(m, torch.randn(40, 3, 2, dtype=DT))
    want = torch.sort(a.abs().log(), descending=True).values
    assert_close(L.exponents, want.expand(3, 5), tol="float64_closed_form")
    assert L.decay_rate == pytest.approx(-math.log(1.1)) and L.horizon_e == math.inf


@pytest.mark.parametrize("v", [-1.0, 0.5, 3.0])
def test_lyapunov_of_lstm_with_constant_forget_input_is_log_sigma_v(v):
    m = lstmlab.Recurrent(2, 5, cell="lstm", dtype=DT)
    f = slice(5, 10)  # gates stacked i, f, g, o
    with torch.no_grad():
        m.weight_hh_l0.zero_()
        m.weight_ih_l0[f] = 0
        m.bias_ih_l0[f] = v
        m.bias_hh_l0[f] = 0
    L = lyapunov(m, torch.randn(30, 2, 2, dtype=DT), warmup=1)
    top = math.log(torch.sigmoid(torch.tensor(v, dtype=DT)).item())
    assert_close(L.exponents[:, :5], torch.full((2, 5), top, dtype=DT), tol="float64_closed_form")
    assert (L.exponents[:, 5:] < top - 5).all()  # the h block is nilpotent: no error survives there
    assert L.horizon_e == pytest.approx(-1 / top) and L.horizon_1e6 == pytest.approx(math.log(1e6) / -top)
    # top-k agrees with the full spectrum
    assert_close(
        lyapunov(m, torch.randn(30, 2, 2, dtype=DT), k=2, warmup=1).exponents,
        torch.full((2, 2), top, dtype=DT),
        tol="float64_closed_form",
    )


def test_lyapunov_top_exponent_matches_the_measured_decay_of_the_gradient():
    """lambda_1 is the asymptotic decay rate of a backpropagated error."""
    m = lstmlab.Recurrent(1, 16, cell="rnn-tanh", dtype=DT)
    x = torch.randn(300, 1, 1, dtype=DT, generator=torch.Generator().manual_seed(0))
    L = lyapunov(m, x, k=1, warmup=20)
    gf = gradient_flow(m, x, lambda out: out[-1].sum())
    rate = -(gf.h[50, 0].log() - gf.h[250, 0].log()).item() / 200
    assert rate == approx(L.decay_rate, "decay_fit")


def explicit_product(J, t, t2):
    P = torch.eye(J.shape[-1], dtype=J.dtype).expand(J.shape[1], -1, -1)
    for k in range(t, t2):
        P = J[k] @ P
    return P


@pytest.mark.parametrize("stride", [1, 2])
def test_lag_jacobian_norms_are_norms_of_explicit_products(stride):
    m = model("vanilla")
    x = torch.randn(7, B, I, dtype=DT)
    run = record(m, x)
    J = step_jacobians(m, x)
    lag = lag_jacobians(J, run.trace["f"], stride=stride)
    for i, t in enumerate(lag.starts.tolist()):
        for j, t2 in enumerate(lag.ends.tolist()):
            if t2 <= t:
                assert torch.isnan(lag.frobenius[:, i, j]).all()
                continue
            P = explicit_product(J, t, t2)
            assert_close(lag.frobenius[:, i, j], torch.linalg.matrix_norm(P), tol="float64_closed_form")
            assert_close(lag.spectral[:, i, j], torch.linalg.svdvals(P)[:, 0], tol="float64_closed_form")
            fprod = run.trace["f"][t:t2].prod(0)
            torch.testing.assert_close(lag.cell_spectral[:, i, j], fprod.abs().amax(-1))
            rest = torch.linalg.matrix_norm(P[:, H : 2 * H, H : 2 * H] - torch.diag_embed(fprod))
            torch.testing.assert_close(lag.cell_share[:, i, j], fprod.norm(dim=-1) / (fprod.norm(dim=-1) + rest))


@pytest.mark.parametrize("cell", ["lstm1997", "vanilla", "cifg"])
def test_cell_path_carries_everything_under_the_truncated_rule(cell):
    m = model(cell, truncate=True)
    x = torch.randn(8, B, I, dtype=DT)
    run = record(m, x)
    lag = lag_jacobians(step_jacobians(m, x), run.trace["f"])
    share = lag.cell_share[~torch.isnan(lag.cell_share)]
    assert_close(share, torch.ones_like(share), tol="float64_closed_form")


def state_gradients(m, x, loss_fn):
    """dL/dh_t and dL/dc_t by torch.autograd.grad with respect to the state tensors of a
    loop written here (total derivatives: c_t's includes the path through h_t of the same
    step): independent of the hooks gradient_flow uses."""
    p = m.cell_params(0)
    state = reference.zero_state(m.spec, x.shape[1], H, x)
    states, outs = [], []
    for t in range(x.shape[0]):
        state = reference.step(m.spec, p, x[t], state, truncate=m.truncate)
        states.append(state)
        outs.append(state[0])
    flat = [s for st in states for s in st]
    grads = torch.autograd.grad(loss_fn(torch.stack(outs)), flat, allow_unused=True)
    grads = [torch.zeros_like(s) if g is None else g for s, g in zip(flat, grads)]
    n = len(m.spec.state_names)
    return [torch.stack([grads[t * n + k] for t in range(x.shape[0])]) for k in range(n)]


@pytest.mark.parametrize("cell", ["rnn-tanh", "gru", "lstm", "lstm1997", "fgr"])
def test_gradient_flow_equals_autograd_state_gradients(cell):
    m = model(cell)
    x = torch.randn(T, B, I, dtype=DT)
    u = torch.randn(T, B, H, dtype=DT)
    loss = lambda out: (out * u).sum()  # a loss on every step
    gf = gradient_flow(m, x, loss)
    want = state_gradients(m, x, loss)
    assert_close(gf.h, want[0].norm(dim=-1), tol="float64_closed_form")
    if gf.c is not None:
        assert_close(gf.c, want[1].norm(dim=-1), tol="float64_closed_form")
    assert gf.loss == pytest.approx(loss(m(x)[0]).item())
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("cell", ["rnn-relu", "gru", "vanilla", "lstm1997", "fgr"])
def test_gradient_flow_on_the_cpu_backend_equals_the_hooked_reference(cell):
    from lstmlab.backends import availability

    ok, why = availability().get("cpu", (False, "not registered"))
    if not ok:
        pytest.skip(f"cpu backend unavailable: {why}")
    torch.manual_seed(0)
    ref = lstmlab.Recurrent(I, H, cell=cell, dtype=DT, num_layers=2, bidirectional=True, backend="reference")
    cpu = lstmlab.Recurrent(I, H, cell=cell, dtype=DT, num_layers=2, bidirectional=True, backend="cpu")
    cpu.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=DT)
    u = torch.randn(T, B, 2 * H, dtype=DT)
    for layer, direction in [(0, 0), (0, 1), (1, 1)]:
        a = gradient_flow(ref, x, lambda out: (out * u).sum(), layer=layer, direction=direction)
        b = gradient_flow(cpu, x, lambda out: (out * u).sum(), layer=layer, direction=direction)
        assert_close(b.h, a.h)
        if a.c is not None:
            assert_close(b.c, a.c)


def test_lstm1997_carries_the_error_unchanged_along_the_carousel():
    m = model("lstm1997")
    x = torch.randn(50, B, I, dtype=DT)
    u = torch.randn(B, H, dtype=DT)
    dc = state_gradients(m, x, lambda out: (out[-1] * u).sum())[1]
    assert_close(dc[:-1], dc[-1].expand(49, -1, -1), tol="exact")
    gf = gradient_flow(m, x, lambda out: (out[-1] * u).sum())
    assert_close(gf.c, gf.c[-1].expand(50, -1), tol="exact")
    assert (gf.h[:-1] == 0).all()  # the truncated rule: no error reaches h_{t-1} through the gates


def test_bad_arguments():
    m = model("lstm")
    x = torch.randn(T, B, I, dtype=DT)
    with pytest.raises(ValueError, match=r"k=0 is invalid; allowed: an int in \[1, 8\]"):
        lyapunov(m, x, k=0)
    with pytest.raises(ValueError, match=r"warmup=6 is invalid; allowed: an int in \[0, 5\]"):
        lyapunov_from_jacobians(step_jacobians(m, x), warmup=6)
    with pytest.raises(ValueError, match=r"layer=1, direction=0 is invalid; the model has 1 layers"):
        step_jacobians(m, x, layer=1)
    with pytest.raises(ValueError, match=r"stride=0 is invalid"):
        lag_jacobians(step_jacobians(m, x), stride=0)
