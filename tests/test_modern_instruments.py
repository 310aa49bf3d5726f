"""The instruments on the modern cells (issue #13): closed-form step Jacobians of slstm, minlstm
and mingru against autograd Jacobians of the reference step (slstm's stabiliser m held fixed,
as the reference's backward holds it), the Lyapunov spectrum of a minGRU with a constant
update gate, and the gradient flow of an sLSTM against autograd's state gradients."""

import math

import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab.analysis import gradient_flow, lyapunov, record, step_jacobians
from lstmlab.backends import reference

DT = torch.float64
I, B, T = 3, 2, 5


def layer(cell, hidden=4, seed=0, **kw):
    torch.manual_seed(seed)
    return lstmlab.Recurrent(I, hidden, cell=cell, dtype=DT, backend="reference", **kw)


def autograd_step_jacobians(m, x, hx=None, direction=0):
    """d s_t / d s_{t-1} by torch.func.jacrev of reference.step, one step and batch element
    at a time, s = (h, c, n) for slstm with m (the last state) held at its recorded value.
    direction 1: the reverse direction of layer 0, which reads x backwards."""
    run = record(m, x, hx, direction=direction)
    p = m.cell_params(0, direction)
    x = x.flip(0) if direction else x
    carried = 3 if m.spec.kind == "slstm" else 1  # the states that carry error
    out = []
    for t in range(x.shape[0]):
        row = []
        for b in range(x.shape[1]):
            prev = [s[t, b : b + 1] for s in run.prev]
            fixed = prev[carried:]

            def f(flat, t=t, b=b, fixed=fixed):
                st = tuple(flat.view(carried, 1, -1).unbind(0)) + tuple(fixed)
                new = reference.step(m.spec, p, x[t, b : b + 1], st)
                return torch.cat([v[0] for v in new[:carried]])

            row.append(torch.func.jacrev(f)(torch.cat([v[0] for v in prev[:carried]])))
        out.append(torch.stack(row))
    return torch.stack(out)


SLSTM_CASES = [
    dict(hidden=4, heads=1, forget_activation="sigmoid"),
    dict(hidden=4, heads=2, forget_activation="sigmoid"),
    dict(hidden=4, heads=4, forget_activation="exp"),
    dict(hidden=6, heads=3, forget_activation="exp"),
    dict(hidden=6, heads=1, forget_activation="exp"),
]


@pytest.mark.parametrize("case", SLSTM_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_slstm_step_jacobians_equal_autograd_with_m_fixed(case):
    m = layer("slstm", **case)
    x = 2 * torch.randn(T, B, I, dtype=DT, generator=torch.Generator().manual_seed(1))
    J = step_jacobians(m, x)
    assert J.shape == (T, B, 3 * case["hidden"], 3 * case["hidden"])
    assert_close(J, autograd_step_jacobians(m, x), tol="jacobian")


def test_slstm_step_jacobians_of_the_reverse_direction():
    m = layer("slstm", heads=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=DT, generator=torch.Generator().manual_seed(4))
    assert_close(step_jacobians(m, x, direction=1), autograd_step_jacobians(m, x, direction=1), tol="jacobian")


def test_slstm_step_jacobians_from_a_given_state_where_the_forget_branch_wins():
    """From a finite initial state with m_0 large, m_t = log f + m_{t-1} (f' = 1 exactly)
    for some units: the c and n diagonals carry the error unchanged there."""
    m = layer("slstm", hidden=4, forget_activation="exp")
    g = torch.Generator().manual_seed(3)
    hx = (
        torch.randn(1, B, 4, generator=g, dtype=DT),
        torch.randn(1, B, 4, generator=g, dtype=DT),
        torch.rand(1, B, 4, generator=g, dtype=DT) + 0.5,
        torch.full((1, B, 4), 5.0, dtype=DT),
    )
    x = torch.randn(T, B, I, generator=g, dtype=DT)
    J = step_jacobians(m, x, hx)
    assert_close(J, autograd_step_jacobians(m, x, hx), tol="jacobian")
    f = record(m, x, hx).trace["f"]
    assert (f == 1).any()  # the case the test is for


@pytest.mark.parametrize("cell", ["minlstm", "mingru"])
@pytest.mark.parametrize("hidden", [1, 4, 7])
def test_min_cell_step_jacobians_equal_autograd_and_are_diagonal(cell, hidden):
    m = layer(cell, hidden=hidden)
    x = 2 * torch.randn(T, B, I, dtype=DT, generator=torch.Generator().manual_seed(2))
    J = step_jacobians(m, x)
    want = autograd_step_jacobians(m, x)
    assert_close(J, want, tol="jacobian")
    assert (want == torch.diag_embed(torch.diagonal(want, dim1=-2, dim2=-1))).all()  # no path through the gates


def test_min_cell_step_jacobians_of_the_reverse_direction():
    m = layer("minlstm", bidirectional=True)
    x = torch.randn(T, B, I, dtype=DT)
    run = record(m, x, direction=1)
    assert_close(step_jacobians(m, x, direction=1), torch.diag_embed(run.trace["f"]), tol="exact")


@pytest.mark.parametrize("bias", [-2.0, 0.0, 1.5])
def test_lyapunov_of_mingru_with_constant_update_gate_is_log_one_minus_z(bias):
    """z_t = sigma(b) for every step (weight_ih's z rows zero): every exponent is
    log(1 - sigma(b)) exactly, and the horizon is 1 / -log(1 - z)."""
    H = 5
    m = layer("mingru", hidden=H)
    with torch.no_grad():
        m.weight_ih_l0[:H] = 0  # rows z, h
        m.bias_ih_l0[:H] = bias
    L = lyapunov(m, torch.randn(30, 3, I, dtype=DT))
    want = math.log(1 - torch.sigmoid(torch.tensor(bias, dtype=DT)).item())
    assert_close(L.exponents, torch.full((3, H), want, dtype=DT), tol="float64_closed_form")
    assert L.horizon_e == pytest.approx(-1 / want)


def test_lyapunov_of_mingru_is_the_mean_log_carry_of_each_unit():
    """With z varying over time the Jacobians stay diagonal: the spectrum is, per batch
    element, the sorted time averages of log(1 - z_t) of each unit."""
    m = layer("mingru", hidden=4)
    x = torch.randn(40, 2, I, dtype=DT)
    L = lyapunov(m, x)
    want = torch.log(1 - record(m, x).trace["z"]).mean(0).sort(-1, descending=True).values
    assert_close(L.exponents, want, tol="float64_closed_form")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_slstm_gradient_flow_equals_autograd_state_gradients(backend):
    """dL/dh_t, dL/dc_t, dL/dn_t (c, n: the stabilised states the backward carries) by
    torch.autograd.grad on a loop written here, against gradient_flow's hooks. On a layer
    of the cpu backend too, whose kernel norms have no n: all three must still come back."""
    m = layer("slstm", heads=2)
    m.backend = backend
    x = torch.randn(T, B, I, dtype=DT)
    u = torch.randn(T, B, 4, dtype=DT)
    p = m.cell_params(0)
    state = reference.zero_state(m.spec, B, 4, x)
    states, outs = [], []
    for t in range(T):
        state = reference.step(m.spec, p, x[t], state)
        states.append(state[:3])
        outs.append(state[0])
    flat = [s for st in states for s in st]
    grads = torch.autograd.grad((torch.stack(outs) * u).sum(), flat)
    want = [torch.stack([grads[3 * t + k] for t in range(T)]).norm(dim=-1) for k in range(3)]
    gf = gradient_flow(m, x, lambda out: (out * u).sum())
    for got, w in zip((gf.h, gf.c, gf.n), want):
        assert_close(got, w, tol="float64_closed_form")


@pytest.mark.parametrize("cell", ["slstm", "minlstm", "mingru"])
def test_training_records_the_flow_of_the_modern_cells(cell, tmp_path):
    """train --flow-every (lstmlab.analysis.watch) measures them too: the closed-form
    Jacobians cover every kind, so TrainConfig no longer refuses them."""
    import json

    from lstmlab.train import TrainConfig, train

    cfg = dict(task="adding", task_params={"T": 22}, cell=cell, hidden_size=4, batch_size=4, eval_every=8)
    train(TrainConfig(**cfg, eval_size=8, test=False, max_sequences=8, flow_every=8, out_dir=str(tmp_path)))
    records = json.loads((tmp_path / "flow.json").read_text())["records"]
    assert [r["sequences"] for r in records] == [0, 8]
    assert all(r["lyapunov_status"] in ("decays", "growing", "constant") for r in records)
    assert all(math.isfinite(r["lyapunov_top"]) for r in records)


def test_the_closed_forms_cover_every_kind_and_refuse_an_unknown_one():
    import dataclasses

    from lstmlab.analysis.jacobians import CLOSED_FORM_KINDS, check_closed_form
    from lstmlab.cells.spec import KINDS

    assert set(CLOSED_FORM_KINDS) == set(KINDS)
    spec = dataclasses.replace(lstmlab.get_cell("lstm"), name="fake")
    object.__setattr__(spec, "kind", "mlstm")  # past CellSpec's own check, as a kind registered later
    with pytest.raises(lstmlab.ArgumentError, match=r"cell 'fake' is of kind 'mlstm': the closed-form step Jacobians"):
        check_closed_form(spec)
