"""LSTM with projections (torch's proj_size: CellParams.weight_hr (P, H), h P wide) in the
cpu backend: every LSTM-kind cell of the registry against the reference backend, forward
and backward, over the truncated rule, variable lengths, reversal, batch groups and chunk
sizes; cell "lstm" against torch.nn.LSTM(proj_size=P) with torch's own parameters; a
float64 gradcheck; the per-step gradient norms (of the P-wide h)."""

import contextlib

import pytest
import torch

import lstmlab
from conftest import assert_close, gradcheck
from lstmlab.backends import cpu, reference
from lstmlab.backends.reference import CellParams

LSTM_CELLS = [c for c in lstmlab.cell_names() if lstmlab.get_cell(c).kind == "lstm"]
DT = torch.float64


pytestmark = pytest.mark.usefixtures("cpu_backend")


@contextlib.contextmanager
def split(groups=1, chunk=0, slices=False):
    """Batch rows in `groups` groups, or (slices=True) the hidden units offered in two
    slices, which a projected layer must decline; `chunk` steps per chunk."""
    with cpu.force_split(groups=groups, cuts=(0.5,) if slices else ()), cpu.tuning(CHUNK_STEPS=chunk):
        yield


def projected_case(cell, T, B, I, H, P, seed, dtype=DT):
    """A CellParams with weight_hh (G*H, P) and weight_hr (P, H), x and the state (h P
    wide), all leaves that require grad."""
    torch.manual_seed(seed)
    m = lstmlab.Recurrent(I, H, cell=cell, dtype=dtype, backend="reference")
    spec = m.spec
    g = torch.Generator().manual_seed(seed)
    base = m.cell_params(0)
    leaf = lambda t: None if t is None else t.detach().clone().requires_grad_()
    p = CellParams(
        leaf(base.weight_ih),
        (torch.randn(len(spec.gates) * H, P, generator=g, dtype=dtype) * 0.5).requires_grad_(),
        leaf(base.bias_ih),
        leaf(base.bias_hh),
        leaf(base.weight_ch),
        leaf(base.weight_gg),
        (torch.randn(P, H, generator=g, dtype=dtype) * 0.5).requires_grad_(),
    )
    x = torch.randn(T, B, I, generator=g, dtype=dtype).requires_grad_()
    width = {"h": P, "c": H, "a": len(spec.recurrent_gates) * H}
    state = tuple(
        (torch.rand if n == "a" else torch.randn)(B, width[n], generator=g, dtype=dtype).requires_grad_()
        for n in spec.state_names
    )
    return spec, p, x, state


def params_of(p):
    return {n: t for n, t in vars(p).items() if t is not None}


def run(backend, spec, p, x, state, lengths=None, reverse=False, truncate=None):
    out, final, cells = backend.run_layer(
        spec, p, x, state, lengths, reverse=reverse, truncate=truncate, return_cells=True
    )
    outs = [out, *final, cells]
    g = torch.Generator().manual_seed(5)
    cot = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    names = list(params_of(p))
    leaves = [x, *state, *params_of(p).values()]
    grads = torch.autograd.grad(outs, leaves, cot, allow_unused=True)
    keys = [
        "output",
        *(f"final {n}" for n in spec.state_names),
        "cells",
        "d x",
        *(f"d {n}0" for n in spec.state_names),
        *(f"d {n}" for n in names),
    ]
    return dict(
        zip(keys, [o.detach() for o in outs] + [torch.zeros_like(v) if d is None else d for v, d in zip(leaves, grads)])
    )


@pytest.mark.parametrize("cell", LSTM_CELLS)
@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("how", [dict(), dict(groups=2, chunk=2), dict(chunk=1, slices=True), dict(groups=3)])
def test_projection_matches_reference(cell, P, how):
    T, B, I, H = 7, 4, 3, 5
    for k, (lengths, reverse, truncate) in enumerate(
        [
            (None, False, None),
            (torch.tensor([7, 3, 1, 5]), True, None),
            (torch.tensor([2, 7, 7, 4]), False, True),
            (None, True, False),
        ]
    ):
        spec, p, x, state = projected_case(cell, T, B, I, H, P, seed=k)
        want = run(reference, spec, p, x, state, lengths, reverse, truncate)
        with split(**how):
            got = run(cpu, spec, p, x, state, lengths, reverse, truncate)
        assert got.keys() == want.keys()
        assert got["output"].shape == (T, B, P) and got["final h"].shape == (B, P)
        for name in want:
            assert_close(got[name], want[name], msg=f"{cell} P={P} {how} case {k}: {name}")


@pytest.mark.parametrize("cell", ["lstm", "fgr", "np"])
@pytest.mark.parametrize("small_products", [True, False])
@pytest.mark.parametrize("packed", [True, False])
def test_projection_in_float32_through_each_product(cell, small_products, packed):
    """float32, the built-in, the BLAS and MKL's packed products (the projection's too)."""
    spec, p, x, state = projected_case(cell, 6, 5, 3, 20, 7, seed=3, dtype=torch.float32)
    lengths = torch.tensor([6, 3, 1, 5, 6])
    want = run(reference, spec, p, x, state, lengths, reverse=True)
    small = (1 << 62) if small_products else 0
    with cpu.tuning(SMALL_GEMM_LIMIT=small, GROUP_SMALL_GEMM_LIMIT=small, USE_PACKED_GEMM=int(packed)):
        got = run(cpu, spec, p, x, state, lengths, reverse=True)
    for name in want:
        assert_close(got[name], want[name], msg=name)


@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_projection_matches_torch_lstm(P, groups):
    """Both backends' run_layer with torch.nn.LSTM(proj_size=P)'s own parameters give its
    outputs, final states and every gradient (weight_hr_l0's included)."""
    T, B, I, H = 6, 4, 3, 5
    torch.manual_seed(P)
    lstm = torch.nn.LSTM(I, H, proj_size=P, dtype=DT)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, generator=g, dtype=DT, requires_grad=True)
    h0 = torch.randn(1, B, P, generator=g, dtype=DT, requires_grad=True)
    c0 = torch.randn(1, B, H, generator=g, dtype=DT, requires_grad=True)
    leaves = [x, h0, c0, *lstm.parameters()]
    cot = [torch.randn(s, generator=g, dtype=DT) for s in [(T, B, P), (B, P), (B, H)]]

    def grads(out, h, c):
        return [out.detach(), h.detach(), c.detach(), *torch.autograd.grad([out, h, c], leaves, cot)]

    out, (h, c) = lstm(x, (h0, c0))
    want = grads(out, h[0], c[0])
    p = CellParams(lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0, weight_hr=lstm.weight_hr_l0)
    spec = lstmlab.get_cell("lstm")
    for backend in (reference, cpu):
        with split(groups=groups):
            out, (h, c), _ = backend.run_layer(spec, p, x, (h0[0], c0[0]))
        for k, (a, b) in enumerate(zip(grads(out, h, c), want, strict=True)):
            assert_close(a, b, msg=f"{backend.__name__}: item {k}")


@pytest.mark.parametrize(
    "cell,truncate", [("lstm", False), ("fgr", False), ("vanilla", False), ("lstm1997", False), ("cifg", True)]
)
def test_projection_gradcheck(cell, truncate):
    """The hand-written backward against finite differences (truncate=True: the kernel's
    truncated gradient is not the derivative, only the reference's; compared there)."""
    spec, p, x, state = projected_case(cell, 3, 2, 2, 3, 2, seed=1)
    lengths = torch.tensor([3, 2])
    names = list(params_of(p))

    def f(x, *rest):
        st, ws = rest[: len(state)], rest[len(state) :]
        q = CellParams(**dict(zip(names, ws)))
        out, final, cells = cpu.run_layer(spec, q, x, st, lengths, truncate=truncate, return_cells=True)
        return out, *final, cells

    inputs = (x, *state, *params_of(p).values())
    if not truncate:
        assert gradcheck(f, inputs)
        return
    want = run(reference, spec, p, x, state, lengths, truncate=True)
    got = run(cpu, spec, p, x, state, lengths, truncate=True)
    for name in want:
        assert_close(got[name], want[name], msg=name)


@pytest.mark.parametrize("groups", [1, 2])
def test_grad_norms_are_of_the_projected_h(groups):
    """GradNorms.h with a projection: ||dL/dh_t|| over h's P entries (the state the next
    step reads), as the reference loop's retained gradients give; c's over H."""
    spec, p, x, state = projected_case("lstm", 6, 3, 2, 5, 2, seed=4)
    lengths = torch.tensor([6, 2, 4])
    with cpu.GradNorms() as norms, split(groups=groups, chunk=2):
        out, final, _ = cpu.run_layer(spec, p, x, state, lengths)
    g = torch.Generator().manual_seed(8)
    cot = [torch.randn(t.shape, generator=g, dtype=DT) for t in (out, *final)]
    torch.autograd.backward([out, *final], cot)

    xw = reference.input_projection(p, x)
    valid = (torch.arange(6).unsqueeze(1) < lengths).unsqueeze(-1)
    s, news, outs = state, [], []
    for t in range(6):
        new = reference.pointwise(spec, p, xw[t], s)
        for n in new:
            n.retain_grad()
        news.append(new)
        s = tuple(torch.where(valid[t], n, o) for n, o in zip(new, s))
        outs.append(s[0] * valid[t])
    torch.autograd.backward([torch.stack(outs), *s], cot)
    for k, got in enumerate([norms.h[0], norms.c[0]]):
        want = torch.stack([n[k].grad.norm(dim=1) for n in news]) * valid[..., 0]
        assert got.shape == (6, 3)
        assert_close(got, want, msg=f"{'hc'[k]} norms")


def test_projection_errors():
    spec, p, x, state = projected_case("lstm", 2, 2, 2, 3, 2, seed=0)
    gru = lstmlab.get_cell("gru")
    with pytest.raises(ValueError, match=r"weight_hr given for cell 'gru'.*lstm cells only"):
        cpu.run_layer(
            gru, CellParams(torch.zeros(9, 2), torch.zeros(9, 2), weight_hr=torch.zeros(2, 3)), x, (torch.zeros(2, 2),)
        )
    ext = cpu._extension()
    from lstmlab.backends.csrc.layout import plan

    pl = plan(spec, 3, (0, 3), False, 2)
    none, idx = torch.zeros(0, dtype=DT), torch.zeros(0, dtype=torch.long)
    with pytest.raises(RuntimeError, match="bad weight_hr shape"):
        ext.forward(
            ext.Cell(**pl.cfg),
            pl.bounds,
            1,
            x.detach(),
            torch.zeros(2, 2, dtype=DT),
            torch.zeros(2, 3, dtype=DT),
            torch.zeros(12, 2, dtype=DT),
            torch.zeros(12, dtype=DT),
            torch.zeros(12, 2, dtype=DT),
            none,
            idx,
            idx,
            none,
            idx,
            False,
            False,
            [0, 0, 0, 0, 0],
            torch.zeros(2, 4, dtype=DT),
        )
    with pytest.raises(ValueError, match="one slice"):
        plan(spec, 4, (0, 2, 4), False, 2)


@pytest.mark.parametrize("cell", ["lstm", "fgr"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_projection_propagates_nonfinite_values_as_reference(cell, value):
    """NaN / +-inf in x at one step, in h0, c0 or one entry of weight_hr or weight_hh: the
    same non-finite pattern and finite values as the reference, forward and backward."""
    from test_backend_cpu_nonfinite import same_nonfinite

    assert cpu.run_layer(*projected_case(cell, 4, 0, 2, 5, 3, seed=2)[:4])[0].shape == (4, 0, 3)  # empty batch
    for where in ("x", "h0", "c0", "weight_hr", "weight_hh"):
        spec, p, x, state = projected_case(cell, 4, 3, 2, 5, 3, seed=2)
        with torch.no_grad():
            target = {"x": x[1], "h0": state[0], "c0": state[1]}.get(where)
            (getattr(p, where) if target is None else target)[1, 1] = value
        want = run(reference, spec, p, x, state)
        got = run(cpu, spec, p, x, state)
        for name in want:
            same_nonfinite(got[name], want[name], DT, f"{cell}, {value} in {where}: {name}")


@pytest.mark.parametrize("groups", [1, 2])
def test_projection_inference_matches_training_forward(groups):
    """Under no_grad the kernel keeps one step of m_t (no backward to feed): same results."""
    spec, p, x, state = projected_case("fgr", 9, 4, 2, 6, 3, seed=6)
    lengths = torch.tensor([9, 4, 1, 7])
    with split(groups=groups, chunk=2):
        train = cpu.run_layer(spec, p, x, state, lengths, return_cells=True)
        with torch.no_grad():
            infer = cpu.run_layer(spec, p, x, state, lengths, return_cells=True)
    for a, b in zip([train[0], *train[1], train[2]], [infer[0], *infer[1], infer[2]], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("P", [0, 2])
def test_padding_is_zero_as_torch_pads_also_with_nonfinite_weights(P):
    """Past a sequence's length the output is 0, as torch.nn.LSTM's packed output padded
    by pad_packed_sequence, even where the held state is NaN or infinite: on both backends."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from test_backend_cpu_nonfinite import same_nonfinite

    T, B, I, H = 5, 3, 2, 4
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, proj_size=P, dtype=DT)
    with torch.no_grad():
        (lstm.weight_hr_l0 if P else lstm.weight_hh_l0)[1, 1] = float("inf")
    x = torch.randn(T, B, I, dtype=DT)
    lengths = torch.tensor([5, 2, 3])
    want, _ = pad_packed_sequence(lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))[0], total_length=T)
    p = CellParams(
        lstm.weight_ih_l0,
        lstm.weight_hh_l0,
        lstm.bias_ih_l0,
        lstm.bias_hh_l0,
        weight_hr=lstm.weight_hr_l0 if P else None,
    )
    state = (torch.zeros(B, P or H, dtype=DT), torch.zeros(B, H, dtype=DT))
    for backend in (cpu, reference):
        with torch.no_grad():
            got, _, _ = backend.run_layer(lstmlab.get_cell("lstm"), p, x, state, lengths)
        assert not torch.isfinite(got).all()
        same_nonfinite(got, want, DT, f"{backend.__name__}, P={P}")
        assert torch.equal(got[3:, 1], torch.zeros(2, P or H, dtype=DT))
