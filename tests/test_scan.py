"""The parallel-in-time route (lstmlab.backends.scan) against sequential loops in float64:
the scan h_t = a_t h_{t-1} + b_t forward and backward (short, long, extreme gates, gradcheck),
and run_layer for minlstm and mingru against a step-by-step float64 implementation of the
cells' equations (Feng et al. 2024, as written in MODERN.md)."""

import pytest
import torch

import lstmlab
from conftest import TOL, assert_close, gradcheck
from lstmlab.backends import reference
from lstmlab.backends import scan as S
from lstmlab.backends.reference import CellParams
from lstmlab.errors import ArgumentError

f64 = torch.float64


def sequential(log_a, b, h0):
    """h_t = exp(log_a_t) h_{t-1} + b_t, one step at a time: the definition."""
    h, out = h0, []
    for a_t, b_t in zip(log_a.exp().unbind(0), b.unbind(0)):  # unbind: one gradient, not T
        h = a_t * h + b_t
        out.append(h)
    return torch.stack(out)


def _inputs(T, B=3, H=5, seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    log_a = -torch.rand(T, B, H, generator=g, dtype=dtype) * 2  # a in (e^-2, 1]
    b = torch.randn(T, B, H, generator=g, dtype=dtype)
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    return log_a, b, h0


def _grads(fn, inputs, seed=1):
    """fn's output and the gradients of <output, w> for a fixed random w."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=f64).to(out.dtype)
    return (out.detach(), *torch.autograd.grad((out * w).sum(), inputs))


# ---- the scan -------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 31, 32, 33, 100, 257, 1025])
def test_scan_matches_sequential_forward_and_backward(T):
    inputs = _inputs(T, seed=T)
    got, exp = _grads(S.scan, inputs), _grads(sequential, inputs)
    for name, g, e in zip(("h", "d log_a", "d b", "d h0"), got, exp):
        assert_close(g, e, msg=f"T={T} {name}")


def test_log_scan_is_scan_of_exp():
    log_a, b, h0 = _inputs(300)
    log_b = b  # any real log_b: b = exp(log_b) > 0
    got = _grads(S.log_scan, (log_a, log_b, h0))
    exp = _grads(lambda la, lb, h: sequential(la, lb.exp(), h), (log_a, log_b, h0))
    for g, e in zip(got, exp):
        assert_close(g, e)


def test_gradcheck_and_double_backward_float64():
    inputs = [t.requires_grad_() for t in _inputs(40, B=2, H=2)]  # 40 > 32: the chunked route
    assert gradcheck(S.scan, inputs)
    rtol, atol = TOL["gradcheck"]
    assert torch.autograd.gradgradcheck(S.scan, inputs, eps=1e-6, atol=atol, rtol=rtol)


def _relative_error(got, log_a, b, h0, exp):
    """|got - exp| relative to the sum of the magnitudes of h_t's terms (the condition of a sum)."""
    scale = sequential(log_a, b.abs(), h0.abs())
    return ((got.to(f64) - exp) / scale).abs().max().item()


# Float32, T = 10 000, against the float64 recurrence on the same (float32) inputs. The float32
# loop h = a h + b itself is off by 1.6e-4 where a = 1 - 1e-9 (a rounds to 1.0) and by 1.3e-5
# where a = exp(-1e-3); the scan sums the logs of the a's instead and reaches 2.6e-7 to 1.0e-6
# on every case below (measured; backward 0.9e-7 to 3.1e-7 of the largest entry).
LONG = {
    "random a in (0.5, 1)": (lambda g, s: -torch.rand(s, generator=g) * 0.7, lambda g, s: torch.randn(s, generator=g)),
    "a = 1 - 1e-9": (lambda g, s: torch.full(s, -1e-9), lambda g, s: torch.full(s, -20.0)),
    "a = exp(-1e-3)": (lambda g, s: torch.full(s, -1e-3), lambda g, s: torch.randn(s, generator=g) - 3),
    "a near 0 or near 1": (
        lambda g, s: torch.where(torch.rand(s, generator=g) < 0.5, -30.0, -1e-7),
        lambda g, s: 5 * torch.randn(s, generator=g),
    ),
    "b = e^80 or e^-80": (
        lambda g, s: -0.01 * torch.rand(s, generator=g),
        lambda g, s: torch.where(torch.rand(s, generator=g) < 0.5, 80.0, -80.0),
    ),
}


@pytest.mark.parametrize("case", list(LONG))
def test_log_scan_float32_ten_thousand_steps(case):
    g = torch.Generator().manual_seed(0)
    shape = (10_000, 2, 16)
    log_a, log_b = LONG[case][0](g, shape), LONG[case][1](g, shape)
    h0 = torch.randn(shape[1:], generator=g)
    exp = sequential(log_a.to(f64), log_b.to(f64).exp(), h0.to(f64))
    got = S.log_scan(log_a, log_b, h0)
    assert torch.isfinite(got).all()
    err = _relative_error(got, log_a.to(f64), log_b.to(f64).exp(), h0.to(f64), exp)
    assert err < TOL["scan_float32_long"][0], f"{case}: relative error {err:.2e}"


def test_log_scan_float32_ten_thousand_steps_backward():
    g = torch.Generator().manual_seed(1)
    shape = (10_000, 2, 16)
    log_a, log_b = -torch.rand(shape, generator=g) * 0.05, torch.randn(shape, generator=g)
    h0 = torch.randn(shape[1:], generator=g)
    got = _grads(S.log_scan, (log_a, log_b, h0))
    exp = _grads(lambda la, lb, h: sequential(la, lb.exp(), h), tuple(t.to(f64) for t in (log_a, log_b, h0)))
    for name, gt, e in zip(("h", "d log_a", "d log_b", "d h0"), got, exp):
        err = ((gt.to(f64) - e).abs().max() / e.abs().max()).item()
        assert err < TOL["scan_float32_long"][0], f"{name}: error {err:.2e} of the largest entry"


def test_extreme_gates_float64():
    """a = 0 exactly (log_a = -inf), a below float64's smallest, a = 1 - 1e-15, b from e^-300 to e^300."""
    g = torch.Generator().manual_seed(2)
    T, B, H = 200, 2, 6
    choice = torch.randint(0, 4, (T, B, H), generator=g)
    log_a = torch.tensor([float("-inf"), -800.0, -1e-15, -0.5], dtype=f64)[choice]
    log_b = torch.tensor([-300.0, 300.0, 0.0, -700.0], dtype=f64)[torch.randint(0, 4, (T, B, H), generator=g)]
    h0 = torch.randn(B, H, generator=g, dtype=f64)
    got = S.log_scan(log_a, log_b, h0)
    assert_close(got, sequential(log_a, log_b.exp(), h0))


# ---- run_layer: minlstm and mingru ---------------------------------------------------------


def min_cell(kind, activation="g_min"):
    """The registry's minlstm or mingru with h~ = activation(k_h)."""
    return lstmlab.get_cell(kind).with_options(activation=activation)


def _act(name, x):
    if name == "g_min":  # Feng et al.: x + 1/2 for x >= 0, sigmoid(x) otherwise
        return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))
    assert name == "identity", name
    return x


def cell_step(spec, p, x_t, h):
    """One step of the contract's equations, in linear space."""
    k = x_t @ p.weight_ih.t() + p.bias_ih
    if spec.kind == "mingru":
        k_z, k_h = k.chunk(2, dim=-1)
        z = torch.sigmoid(k_z)
        return (1 - z) * h + z * _act(spec.activation, k_h)
    k_f, k_i, k_h = k.chunk(3, dim=-1)
    f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
    return f / (f + i) * h + i / (f + i) * _act(spec.activation, k_h)


def sequential_layer(spec, p, x, h0, lengths, reverse):
    """Row by row, step by step: the layer's definition (held state and zero output past a length)."""
    T, B, _ = x.shape
    outs, finals = [], []
    for r in range(B):
        n = T if lengths is None else int(lengths[r])
        order = range(n - 1, -1, -1) if reverse else range(n)
        h, out = h0[r : r + 1], [None] * T
        for t in order:
            h = cell_step(spec, p, x[t, r : r + 1], h)
            out[t] = h
        outs.append(torch.cat([o if o is not None else torch.zeros_like(h) for o in out]))
        finals.append(h)
    return torch.stack(outs, 1), torch.cat(finals)


def _layer_inputs(kind, T, B, I, H, seed):
    g = torch.Generator().manual_seed(seed)
    G = 3 if kind == "minlstm" else 2
    w = torch.randn(G * H, I, generator=g, dtype=f64) * 0.8
    bias = torch.randn(G * H, generator=g, dtype=f64)
    x = torch.randn(T, B, I, generator=g, dtype=f64) * 2
    h0 = torch.randn(B, H, generator=g, dtype=f64)
    return w, bias, x, h0


@pytest.mark.parametrize("kind", ["minlstm", "mingru"])
@pytest.mark.parametrize("activation", ["g_min", "identity"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_run_layer_matches_sequential_cell(kind, activation, reverse, with_lengths):
    spec = min_cell(kind, activation)
    T, B, I, H = 45, 4, 3, 5  # T > 32: the chunked route
    lengths = torch.tensor([45, 1, 30, 44]) if with_lengths else None

    def scan_route(w, bias, x, h0):
        out, (h,), cells = S.run_layer(spec, CellParams(w, None, bias), x, (h0,), lengths, reverse=reverse)
        assert cells is None
        return torch.cat([out.flatten(), h.flatten()])

    def loop_route(w, bias, x, h0):
        out, h = sequential_layer(spec, CellParams(w, None, bias), x, h0, lengths, reverse)
        return torch.cat([out.flatten(), h.flatten()])

    inputs = _layer_inputs(kind, T, B, I, H, seed=0)
    got, exp = _grads(scan_route, inputs), _grads(loop_route, inputs)
    for name, g, e in zip(("out + h_n", "d weight_ih", "d bias_ih", "d x", "d h0"), got, exp):
        assert_close(g, e, msg=f"{kind} {activation} reverse={reverse} lengths={with_lengths}: {name}")


@pytest.mark.parametrize("name", ["minlstm", "mingru"])
@pytest.mark.parametrize("activation", ["g_min", "identity"])
@pytest.mark.parametrize("dtype", [f64, torch.float32])
def test_run_layer_matches_reference_backend(name, activation, dtype):
    """The registry's cells, bidirectional use with lengths: both directions, forward and backward."""
    spec = min_cell(name, activation)
    lengths = torch.tensor([50, 7, 33])
    inputs = [t.to(dtype) for t in _layer_inputs(name, 50, 3, 4, 6, seed=5)]

    def route(backend):
        def fn(w, bias, x, h0):
            p = CellParams(w, None, bias)
            parts = []
            for reverse in (False, True):
                out, (h,), _ = backend.run_layer(spec, p, x, (h0,), lengths, reverse=reverse)
                parts += [out.flatten(), h.flatten()]
            return torch.cat(parts)

        return fn

    got, exp = _grads(route(S), inputs), _grads(route(reference), inputs)
    tol = "float32_gradient" if dtype == torch.float32 else None
    for what, g, e in zip(("out + h_n", "d weight_ih", "d bias_ih", "d x", "d h0"), got, exp):
        assert_close(g, e, tol=tol, msg=f"{name} {activation} {what}")


@pytest.mark.parametrize("kind", ["minlstm", "mingru"])
def test_run_layer_gradcheck(kind):
    spec = min_cell(kind)
    lengths = torch.tensor([40, 33])

    def fn(w, bias, x, h0):
        out, (h,), _ = S.run_layer(spec, CellParams(w, None, bias), x, (h0,), lengths, reverse=True)
        return out, h

    inputs = [t.requires_grad_() for t in _layer_inputs(kind, 40, 2, 2, 2, seed=3)]
    assert gradcheck(fn, inputs)


@pytest.mark.parametrize("kind", ["minlstm", "mingru"])
def test_run_layer_double_backward(kind):
    """The layer's Function differentiates its recomputed gates under create_graph."""
    spec = min_cell(kind, "g_min")
    lengths = torch.tensor([35, 34])

    def fn(w, bias, x, h0):
        out, (h,), _ = S.run_layer(spec, CellParams(w, None, bias), x, (h0,), lengths, reverse=True)
        return out, h

    inputs = [t.requires_grad_() for t in _layer_inputs(kind, 35, 2, 2, 2, seed=4)]
    rtol, atol = TOL["gradcheck"]
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=atol, rtol=rtol)


@pytest.mark.parametrize("kind", ["minlstm", "mingru"])
def test_run_layer_gradient_of_h0_alone(kind):
    """Weights frozen and x constant: only h0 asks for a gradient (the Function skips dk)."""
    spec = min_cell(kind)
    w, bias, x, h0 = _layer_inputs(kind, 40, 3, 2, 4, seed=6)
    grads = []
    for backend in (S, reference):
        h0_ = h0.clone().requires_grad_()
        out, (h,), _ = backend.run_layer(spec, CellParams(w, None, bias), x, (h0_,))
        grads.append(torch.autograd.grad((out * torch.arange(out.numel(), dtype=f64).view(out.shape)).sum(), h0_)[0])
    assert_close(grads[0], grads[1])


@pytest.mark.parametrize("kind", ["minlstm", "mingru"])
def test_run_layer_saves_the_pre_activations_and_h_only(kind):
    """What the scan route keeps for its backward, counted by autograd's saved-tensor hooks:
    x and the weights (the input projection), the pre-activations k (G units of T x B x H)
    and h (one unit); no log-space gate intermediates."""
    T, B, I, H = 64, 4, 3, 8
    G = 3 if kind == "minlstm" else 2
    w, bias, x, h0 = [t.requires_grad_() for t in _layer_inputs(kind, T, B, I, H, seed=2)]
    storages = {}  # data pointer -> bytes: a storage saved twice counts once

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        S.run_layer(min_cell(kind), CellParams(w, None, bias), x, (h0,))
    unit = T * B * H * 8
    own = sum(storages.values()) - x.nbytes - w.nbytes - h0.nbytes
    assert own <= (G + 1) * unit, (
        f"{kind}: the scan route saves {own / unit:.2f} units of (T, B, H); k and h are {G + 1}"
    )


def test_run_layer_refuses_what_it_does_not_do():
    w, bias, x, h0 = _layer_inputs("mingru", 5, 2, 3, 4, seed=0)
    p = CellParams(w, None, bias)
    cases = [
        (lstmlab.get_cell("lstm"), {}, "spec.kind='lstm'"),
        (min_cell("mingru"), {"truncate": True}, "truncate=True"),
        (min_cell("mingru"), {"return_cells": True}, "return_cells=True"),
        (min_cell("mingru"), {"probe": print}, "probe="),
    ]
    for spec, kw, text in cases:
        with pytest.raises(ArgumentError, match=text):
            S.run_layer(spec, p, x, (h0,), **kw)


def test_scan_refuses_mismatched_shapes():
    log_a, b, h0 = _inputs(5)
    with pytest.raises(ArgumentError, match="h0"):
        S.scan(log_a, b, h0[:, :2])
    with pytest.raises(ArgumentError, match="T = 0"):
        S.scan(log_a[:0], b[:0], h0)
