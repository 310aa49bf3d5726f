"""The cpu backend against the reference backend, for every registered cell (generated from
the registry, so a new cell is tested the moment it exists): outputs, final states, cell
states and every gradient, float64 to 1e-10 and float32 to 1e-5, over random shapes,
lengths, directions, the truncated rule and the kernel's code paths (hidden units cut into
slices run in parallel, batch rows cut into groups, the built-in and the BLAS products, chunk
sizes). Also the layer
(multi-layer, bidirectional, packed), the per-step gradient norms and the error paths."""

import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import lstmlab
from conftest import TOL, assert_close, run_and_differentiate
from lstmlab.backends import cpu, reference

# the cells the kernel computes (all registered ones)
CELLS = [c for c in lstmlab.cell_names() if cpu.supports(lstmlab.get_cell(c))[0]]


pytestmark = pytest.mark.usefixtures("cpu_backend")


@contextlib.contextmanager
def knobs(parallel=False, small_products=True, packed=True, chunk=0, copies=True, groups=1):
    """Force the kernel's code paths: slices in parallel, which product, chunk size,
    whether the backward reads the recurrent weights through copies (small weights) or in
    place in torch's order (large ones), and groups > 1: that many groups of batch rows
    (at most one per row; instead of slices), however many threads there are."""
    small, big = (1 << 62) if small_products else 0, (1 << 62) if copies else 0
    with cpu.tuning(
        PARALLEL_MIN_WORK=0 if parallel else 1 << 62,
        SMALL_GEMM_LIMIT=small,
        GROUP_SMALL_GEMM_LIMIT=small,
        USE_PACKED_GEMM=int(packed),
        CHUNK_STEPS=chunk,
        OWN_ORDER_MAX_BYTES=big,
        GATHER_MAX_BYTES=big,
        GROUP_MIN_ROWS=1 << 62,
    ):
        with cpu.force_split(groups=groups):
            yield


def random_case(cell, dtype, T, B, I, H, seed):
    torch.manual_seed(seed)
    m = lstmlab.Recurrent(I, H, cell=cell, dtype=dtype, backend="reference")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).requires_grad_()
    # FGR's state includes gate activations, which live in (0, 1); slstm's normaliser n is
    # positive in the cell's own runs (n_t = f' n_{t-1} + i', from n = 0): drawn from (0, 1)
    # too, as an n near or below 0 makes h = o c / n ill-conditioned (float32 then measures
    # rounding amplified by 1 / n^2, not the implementation)
    state = tuple(
        (torch.rand if n in ("a", "n") else torch.randn)(
            B, m.spec.state_width(n) * H, generator=g, dtype=dtype
        ).requires_grad_()
        for n in m.spec.state_names
    )
    return m, x, state


case = st.fixed_dictionaries(
    {
        "T": st.integers(1, 9),
        "B": st.integers(1, 4),
        "I": st.integers(1, 5),
        "H": st.integers(1, 37),
        "lengths": st.booleans(),
        "reverse": st.booleans(),
        "truncate": st.sampled_from([None, True, False]),
        "parallel": st.booleans(),
        "small_products": st.booleans(),
        "packed": st.booleans(),
        "chunk": st.sampled_from([0, 1, 2, 3]),
        "copies": st.booleans(),
        "groups": st.sampled_from([1, 2, 3]),
        "seed": st.integers(0, 2**16),
    }
)


def same_run(got, expected):
    """(output, final states, d input, parameter gradients) of two runs agree."""
    (o2, s2, dx2, g2), (o1, s1, dx1, g1) = got, expected
    assert_close(o2, o1, msg="output")
    for a, b in zip(s2, s1, strict=True):
        assert_close(a, b, msg="final state")
    assert_close(dx2, dx1, msg="d input")
    for n in g1:
        assert_close(g2[n], g1[n], msg=f"d {n}")


def check_against_reference(cell, dtype, c):
    m, x, state = random_case(cell, dtype, c["T"], c["B"], c["I"], c["H"], c["seed"])
    truncate = c["truncate"] if m.spec.kind == "lstm" else None
    lengths = None
    if c["lengths"]:
        g = torch.Generator().manual_seed(c["seed"])
        lengths = torch.randint(1, c["T"] + 1, (c["B"],), generator=g)
    want = run_and_differentiate(reference, m, x, state, lengths, c["reverse"], truncate)
    with knobs(c["parallel"], c["small_products"], c["packed"], c["chunk"], c.get("copies", True), c.get("groups", 1)):
        got = run_and_differentiate(cpu, m, x, state, lengths, c["reverse"], truncate)
    assert got.keys() == want.keys()
    for name in want:
        assert_close(got[name], want[name], dtype, msg=f"{cell}: {name} ({c})")


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=case)
def test_matches_reference_float64(cell, c):
    check_against_reference(cell, torch.float64, c)


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=case)
def test_matches_reference_float32(cell, c):
    check_against_reference(cell, torch.float32, c)


@pytest.mark.parametrize("cell", CELLS)
def test_long_sequence_many_chunks_in_parallel(cell):
    """Many chunks and slices at once, float32 (the benchmark's dtype), the full gradient."""
    c = dict(
        T=40,
        B=3,
        I=4,
        H=48,
        lengths=True,
        reverse=False,
        truncate=None,
        parallel=True,
        small_products=False,
        packed=True,
        chunk=3,
        seed=7,
    )
    check_against_reference(cell, torch.float32, c)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_sequence_many_chunks_in_batch_groups(cell, dtype):
    """Groups of unequal size (2 and 3 rows: two products) meeting at many chunk ends,
    MKL's products, the full gradient."""
    c = dict(
        T=40,
        B=5,
        I=4,
        H=24,
        lengths=True,
        reverse=False,
        truncate=None,
        parallel=False,
        small_products=False,
        packed=True,
        chunk=3,
        groups=2,
        seed=7,
    )
    check_against_reference(cell, dtype, c)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [1, 2])
def test_products_of_eight_rows_and_more(cell, dtype, groups):
    """The built-in product's 8-row blocks (AVX-512 builds): one slice over 17 rows (two
    blocks and a row), or groups of 8 and 9 rows; H = 21 leaves a partial vector."""
    c = dict(
        T=6,
        B=17,
        I=3,
        H=21,
        lengths=True,
        reverse=False,
        truncate=None,
        parallel=False,
        small_products=True,
        packed=True,
        chunk=2,
        groups=groups,
        seed=5,
    )
    check_against_reference(cell, dtype, c)


def test_batch_groups_are_chosen_for_small_steps_with_enough_rows():
    threads = min(torch.get_num_threads(), os.cpu_count() or 1)
    groups = lambda B, H: cpu._split(B, H, B * 4 * H * H, 16, cpu.Tuning())[1]
    assert groups(16, 64) == min(threads, 2)
    assert groups(32, 128) == min(threads, 4)
    assert groups(15, 64) == 1  # 7 rows a group: too few
    assert groups(64, 256) == 1  # 16.8M multiply-adds a step: slices


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("groups", [1, 3])
def test_layer_matches_reference(cell, groups):
    """Recurrent with backend='cpu' vs 'reference': two layers, bidirectional, batch_first,
    packed sequences of unsorted lengths, given initial state; every gradient; the cpu
    backend as it chooses, or in three groups of batch rows (1, 1 and 2 rows)."""
    I, H, B, T = 3, 6, 4, 7
    torch.manual_seed(0)
    ref = lstmlab.Recurrent(
        I, H, cell=cell, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64, backend="reference"
    )
    ours = lstmlab.Recurrent(
        I, H, cell=cell, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64, backend="cpu"
    )
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64, requires_grad=True)
    hx = tuple(
        torch.randn(4, B, ref.spec.state_width(n) * H, generator=g, dtype=torch.float64) for n in ref.spec.state_names
    )
    hx = hx[0] if len(hx) == 1 else hx
    lengths = torch.tensor([5, 7, 1, 5])
    for model in (ref, ours):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        with knobs(groups=groups) if groups > 1 else contextlib.nullcontext():
            out, state = model(packed, hx)
        state = state if isinstance(state, tuple) else (state,)
        loss = (out.data**2).sum() + sum((s * s.cos()).sum() for s in state)
        model.zero_grad()
        x.grad = None
        loss.backward()
        model.result = (
            out.data.detach(),
            [s.detach() for s in state],
            x.grad.clone(),
            {n: p.grad.clone() for n, p in model.named_parameters()},
        )
    same_run(ours.result, ref.result)


# FGR's layout (csrc/cells.h Layout): gate-to-gate weights in a product of their own, the
# gates fed back first in each slice, the a part of the state slice by slice. These force
# more slices than the machine has cores, uneven ones, odd hidden sizes, and the variants
# that feed back fewer gates (A = 2: cifg, nfg; A = 1: nig without an output gate).
FGR_CELLS = {
    "fgr": "fgr",
    "cifg+fgr": lstmlab.get_cell("cifg").with_options(gate_recurrence=True),
    "nfg+fgr": lstmlab.get_cell("nfg").with_options(gate_recurrence=True),
    "nig+nog+fgr": lstmlab.get_cell("nig").with_options(gate_recurrence=True, output_gate=False),
    "fgr+peepholes": lstmlab.get_cell("fgr").with_options(peepholes=True),
}


@contextlib.contextmanager
def forced_slices(cuts):
    """Cut the hidden units into slices at these fractions of H (however small the work)."""
    with cpu.force_split(cuts=cuts):
        yield


fgr_case = st.fixed_dictionaries(
    {
        "T": st.integers(1, 9),
        "B": st.integers(1, 4),
        "I": st.integers(1, 5),
        "H": st.integers(1, 41),
        "lengths": st.booleans(),
        "reverse": st.booleans(),
        "truncate": st.sampled_from([None, True, False]),
        "parallel": st.just(False),
        "small_products": st.booleans(),
        "packed": st.booleans(),
        "chunk": st.sampled_from([0, 1, 2, 3]),
        "copies": st.booleans(),
        "seed": st.integers(0, 2**16),
        "cuts": st.lists(st.floats(0.05, 0.95), min_size=0, max_size=3),
    }
)


@pytest.mark.slow
@pytest.mark.parametrize("cell", FGR_CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=fgr_case)
def test_fgr_in_uneven_slices_matches_reference(cell, dtype, c):
    with forced_slices(c["cuts"]):
        check_against_reference(FGR_CELLS[cell], dtype, c)


@pytest.mark.slow
@pytest.mark.parametrize("cell", FGR_CELLS)
@pytest.mark.parametrize("H", [29, 67])
@pytest.mark.parametrize("dtype,T", [(torch.float64, 30), (torch.float32, 10)])
@pytest.mark.parametrize("copies", [True, False])
def test_fgr_long_sequence_in_three_slices(cell, H, dtype, T, copies):
    """Odd slice widths, many chunks, the BLAS products (float32: MKL's packed ones), with and
    without the backward's weight copies. (float32 over 30 steps: gradients of ~100 whose
    rounding alone exceeds the tolerance.)"""
    c = dict(
        T=T,
        B=5,
        I=3,
        H=H,
        lengths=True,
        reverse=True,
        truncate=None,
        parallel=False,
        small_products=False,
        packed=True,
        chunk=4,
        copies=copies,
        seed=3,
    )
    with forced_slices([0.31, 0.62]):
        check_against_reference(FGR_CELLS[cell], dtype, c)


@pytest.mark.parametrize("cuts", [[], [0.5], [0.2, 0.7]])
@pytest.mark.parametrize("copies", [True, False])
def test_fgr_bidirectional_layer_in_slices_matches_reference(cuts, copies):
    """Two bidirectional FGR layers over packed sequences, hidden units in slices."""
    I, H, B, T = 3, 11, 4, 8
    torch.manual_seed(2)
    kw = dict(cell="fgr", num_layers=2, bidirectional=True, dtype=torch.float64)
    ref, ours = lstmlab.Recurrent(I, H, backend="reference", **kw), lstmlab.Recurrent(I, H, backend="cpu", **kw)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(4)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64, requires_grad=True)
    hx = tuple(
        torch.rand(4, B, ref.spec.state_width(n) * H, generator=g, dtype=torch.float64) for n in ref.spec.state_names
    )
    lengths = torch.tensor([8, 3, 6, 1])
    results = []
    with forced_slices(cuts), knobs(copies=copies):
        for model in (ref, ours):
            out, state = model(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
            loss = (out.data**2).sum() + sum((s * s.sin()).sum() for s in state)
            model.zero_grad()
            x.grad = None
            loss.backward()
            results.append(
                (
                    out.data.detach(),
                    [s.detach() for s in state],
                    x.grad.clone(),
                    {n: p.grad.clone() for n, p in model.named_parameters()},
                )
            )
    same_run(results[1], results[0])


@pytest.mark.parametrize("cell", ["lstm", "vanilla", "gru"])
def test_inference_matches_training_forward(cell):
    """Under no_grad the kernel keeps only rings of gates and c: same outputs."""
    m, x, state = random_case(cell, torch.float64, 11, 3, 2, 20, seed=3)
    for how in (dict(parallel=True), dict(groups=2)):
        with knobs(chunk=2, **how):
            train = cpu.run_layer(m.spec, m.cell_params(0), x, state, return_cells=m.spec.kind == "lstm")
            with torch.no_grad():
                infer = cpu.run_layer(m.spec, m.cell_params(0), x, state, return_cells=m.spec.kind == "lstm")
        for a, b in zip([train[0], *train[1]], [infer[0], *infer[1]], strict=True):
            assert torch.equal(a, b), how


def reference_state_grads(m, x, state, lengths, reverse, truncate):
    """The reference loop, retaining the grads of the states each step computes: their
    norms are what GradNorms documents (0 past a sequence's length)."""
    spec, p = m.spec, m.cell_params(0)
    xs = reference.reverse_padded(x, lengths) if reverse else x
    xw = reference.input_projection(p, xs)
    T = x.shape[0]
    valid = (
        torch.ones(T, x.shape[1], 1, dtype=torch.bool)
        if lengths is None
        else (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(-1)
    )
    states, outs = [], []
    for t in range(T):
        new = reference.pointwise(spec, p, xw[t], state, truncate)
        for n in new:  # what step t computes: its gradient is the total dL/dh_t, dL/dc_t
            if n.requires_grad:  # (not slstm's m, detached)
                n.retain_grad()
        states.append(new)
        state = tuple(torch.where(valid[t], n, s) for n, s in zip(new, state))
        outs.append(state[0] * valid[t])
    out = torch.stack(outs)
    out = reference.reverse_padded(out, lengths) if reverse else out
    return out, state, states, valid


@pytest.mark.parametrize(
    "cell,truncate",
    [
        ("lstm", False),
        ("vanilla", False),
        ("fgr", False),
        ("lstm1997", True),
        ("gru", None),
        ("rnn-tanh", None),
        ("slstm", None),
        ("minlstm", None),
        ("mingru", None),
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_grad_norms_match_reference(cell, truncate, reverse, groups):
    m, x, state = random_case(cell, torch.float64, 9, 3, 2, 5, seed=11)
    lengths = torch.tensor([9, 4, 1])
    g = torch.Generator().manual_seed(5)
    with cpu.GradNorms() as norms, knobs(groups=groups, chunk=2):
        out, final, _ = cpu.run_layer(m.spec, m.cell_params(0), x, state, lengths, reverse=reverse, truncate=truncate)
    assert len(norms.runs) == 1 and norms.h[0] is None  # filled by backward
    cot = torch.randn(out.shape, generator=g, dtype=out.dtype)
    fcot = [torch.randn(s.shape, generator=g, dtype=s.dtype) for s in final]
    live = [k for k, s in enumerate(final) if s.requires_grad]  # not slstm's m_n
    torch.autograd.backward([out, *[final[k] for k in live]], [cot, *[fcot[k] for k in live]])

    r_out, r_final, states, valid = reference_state_grads(m, x, state, lengths, reverse, truncate)
    torch.autograd.backward([r_out, *[r_final[k] for k in live]], [cot, *[fcot[k] for k in live]])
    for k, got in enumerate([norms.h[0], norms.c[0]]):
        if m.spec.kind != "lstm" and k == 1:
            assert got is None
            continue
        want = torch.stack([s[k].grad.norm(dim=1) for s in states]) * valid[..., 0]  # (T, B), loop order
        want = reference.reverse_padded(want, lengths) if reverse else want
        assert_close(got, want, msg=f"{'hc'[k]} norms")


def test_grad_norms_of_a_layer_come_one_per_layer_and_direction():
    m = lstmlab.Recurrent(2, 4, num_layers=2, bidirectional=True, backend="cpu")
    x = torch.randn(6, 3, 2)
    with cpu.GradNorms() as norms:
        out, _ = m(x)
    out.sum().backward()
    assert [r.reverse for r in norms.runs] == [False, True, False, True]
    assert all(h.shape == (6, 3) and c.shape == (6, 3) for h, c in zip(norms.h, norms.c))
    # outside a block nothing is recorded
    m(x)[0].sum().backward()
    assert len(norms.runs) == 4


def test_unsupported_dtype_falls_back_with_a_warning():
    m = lstmlab.Recurrent(2, 3, dtype=torch.bfloat16, backend="reference")
    x = torch.randn(4, 2, 2, dtype=torch.bfloat16)
    state = reference.zero_state(m.spec, 2, 3, x)
    cpu._warned.clear()
    with pytest.warns(UserWarning, match="torch.bfloat16 on cpu is not supported.*reference"):
        got = cpu.run_layer(m.spec, m.cell_params(0), x, state)
    want = reference.run_layer(m.spec, m.cell_params(0), x, state)
    assert torch.equal(got[0], want[0])


def test_tolerances_are_the_shared_table():
    assert TOL[torch.float64] == (1e-10, 1e-10) and TOL[torch.float32] == (1e-5, 1e-5)


@pytest.mark.parametrize("heads,forget", [(2, "sigmoid"), (4, "exp"), (1, "exp")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_slstm_heads_and_forget_activations_match_reference(heads, forget, dtype):
    """slstm's block-diagonal recurrence (heads > 1: one product per head, the weights in
    the kernel's head-major order) and exponential forget gate, with lengths, both
    directions and the truncated rule's skipped recurrent gradient: every output and gradient."""
    T, B, I, H = 7, 3, 4, 8
    torch.manual_seed(3)
    m = lstmlab.Recurrent(I, H, cell="slstm", heads=heads, forget_activation=forget, dtype=dtype, backend="reference")
    assert m.weight_hh_l0.shape == (4 * H, H // heads) and m.spec.forget_activation == forget
    g = torch.Generator().manual_seed(4)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).requires_grad_()
    state = tuple(
        (torch.rand if n == "n" else torch.randn)(B, H, generator=g, dtype=dtype).requires_grad_()
        for n in m.spec.state_names
    )
    lengths = torch.tensor([7, 3, 5])
    for reverse, truncate in ((False, None), (True, None), (False, True)):
        want = run_and_differentiate(reference, m, x, state, lengths, reverse, truncate)
        got = run_and_differentiate(cpu, m, x, state, lengths, reverse, truncate)
        for name in want:
            assert_close(got[name], want[name], dtype, msg=f"heads={heads} {forget} reverse={reverse}: {name}")


@pytest.mark.parametrize("cell", ["minlstm", "mingru"])
@pytest.mark.parametrize("activation", ["identity", "g_min"])
def test_min_cells_activations_match_reference(cell, activation):
    """The min cells' candidate h~ = act(k): the paper's g_min (pre-activations of either sign)
    or identity; lengths and both directions, float64."""
    T, B, I, H = 6, 3, 2, 9
    torch.manual_seed(5)
    m = lstmlab.Recurrent(I, H, cell=cell, activation=activation, dtype=torch.float64, backend="reference")
    assert m.spec.activation == activation
    g = torch.Generator().manual_seed(6)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).requires_grad_()
    state = (torch.randn(B, H, generator=g, dtype=torch.float64).requires_grad_(),)
    for reverse in (False, True):
        lengths = torch.tensor([6, 2, 4])
        want = run_and_differentiate(reference, m, x, state, lengths, reverse, None)
        got = run_and_differentiate(cpu, m, x, state, lengths, reverse, None)
        for name in want:
            assert_close(got[name], want[name], msg=f"{cell} {activation} reverse={reverse}: {name}")
