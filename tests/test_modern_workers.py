"""The modern cells (slstm, minlstm, mingru) on the cpu backend with several workers
sharing a sequence by units (backends/cpu.py `_modern_split`, csrc/modern.h): slstm's
blocks (each head's dh units cut at the same fractions; the weights permuted into block
order, slstm_rows) meeting at every step, the min cells' unit ranges never meeting, and
slstm's groups of batch rows. Forced splits (`cpu.force_split(cuts=...)`, even and uneven,
with more blocks than workers and blocks narrower than a vector; `groups=3`), against the
reference backend: outputs, final states and
every gradient (x, the initial state, each weight), with variable lengths, both
directions, the truncated rule, a packed bidirectional 2-layer layer, inference without
saved state, per-step gradient norms, NaN propagation and gradcheck; and the split that
the backend chooses itself at a size that is shared between the threads."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import lstmlab
from conftest import TOL, assert_close, gradcheck, run_and_differentiate
from lstmlab.backends import cpu, reference

pytestmark = pytest.mark.usefixtures("cpu_backend")

# (cell, options, H): dh = H / heads units a head. float64 vectors hold 4 or 8 lanes, float32
# 8 or 16: every block and range below is narrower than a vector or ends in a partial one
# (slstm heads=4, H=32: dh=8, blocks of 2 to 6 units)
CASES = {
    "slstm-heads1": ("slstm", {"heads": 1}, 13),
    "slstm-heads2": ("slstm", {"heads": 2}, 22),
    "slstm-heads4-exp": ("slstm", {"heads": 4, "forget_activation": "exp"}, 32),
    "minlstm": ("minlstm", {}, 21),
    "mingru": ("mingru", {}, 21),
}
# even, more blocks than the workers (2 on two cores: each runs two blocks), uneven
CUTS = [(0.5,), (0.25, 0.5, 0.75), (0.3,)]
T, B, I = 7, 4, 3
LENGTHS = torch.tensor([7, 3, 5, 1])


def modern_split(cell, H, heads, dtype, T_=T, B_=B):
    """(groups, workers, edges) that _modern_split gives such a call under the current Tuning."""
    lanes = cpu._vector_bytes() // torch.empty(0, dtype=dtype).element_size()
    dh = H // heads if cell == "slstm" else H
    return cpu._modern_split(cell == "slstm", T_, B_, H, dh, lanes, cpu.current_tuning())


# the forced splits: units cut into blocks (ranges), and for slstm batch rows in groups
# (3 groups of B = 4 rows: 1, 1 and 2 rows), which never meet
SPLITS = [{"cuts": c} for c in CUTS] + [{"groups": 3}]


def splits_for(names, splits=SPLITS):
    """(case, split) pairs, the groups for slstm only (force_split's groups are slstm's)."""
    return [
        pytest.param(n, s, id=n + "-" + "".join(f"{k}{v}" for k, v in s.items()))
        for n in names
        for s in splits
        if "groups" not in s or CASES[n][0] == "slstm"
    ]


# the splits of the slower tests: four blocks (ranges) a head for two workers, and groups
WIDE = splits_for(CASES, [{"cuts": (0.25, 0.5, 0.75)}, {"groups": 3}])


def one_worker():
    """The tuning under which every modern call runs in one worker (no groups, no blocks)."""
    return cpu.tuning(PARALLEL_MIN_WORK=1 << 62, GROUP_MIN_ROWS=1 << 62)


def make(name, dtype, seed=0):
    """A reference-backend layer of the case (its weights are what both backends run), an
    input and an initial state, all requiring grad. slstm's n0 is drawn from (0, 1) (the
    cell's own n is positive; n near 0 makes h = o c / n ill-conditioned) and m0 finite."""
    cell, options, H = CASES[name]
    torch.manual_seed(seed)
    m = lstmlab.Recurrent(I, H, cell=cell, dtype=dtype, backend="reference", **options)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).requires_grad_()
    state = tuple(
        (torch.rand if n == "n" else torch.randn)(B, H, generator=g, dtype=dtype).requires_grad_()
        for n in m.spec.state_names
    )
    return m, x, state


def tol(dtype, name):
    """float32 gradients are sums over steps, rows and gates in another order: their entry."""
    return "float32_gradient" if dtype == torch.float32 and name.startswith("d ") else dtype


# ---- the split the tests force -----------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_forced_splits_are_the_blocks_and_workers_the_tests_rely_on(name):
    """force_split(cuts) cuts each head's dh units (the min cells: H) at round(f * span),
    cuts + 1 blocks a head (none collapses in these cases), for at least 2 workers (one a
    block at most); force_split(groups=3) runs slstm's 4 rows in 3 groups of one worker
    each; one_worker() runs one worker."""
    cell, options, H = CASES[name]
    heads = options.get("heads", 1)
    span = H // heads
    threads = cpu._threads()
    for cuts in CUTS:
        with cpu.force_split(cuts=cuts):
            groups, workers, edges = modern_split(cell, H, heads, torch.float64)
        assert edges == tuple(sorted({0, span, *(max(1, round(f * span)) for f in cuts)})), cuts
        assert len(edges) == len(cuts) + 2
        assert groups == 1 and workers == min((len(edges) - 1) * heads, max(2, threads)) >= 2
    if cell == "slstm":
        with cpu.force_split(groups=3):
            assert modern_split(cell, H, heads, torch.float64) == (3, 1, (0, span))
        with cpu.force_split(cuts=(0.5,)):  # heads=4 of dh=8: two blocks of 4 units a head, 8 in all
            assert modern_split("slstm", 32, 4, torch.float64) == (1, min(8, max(2, threads)), (0, 4, 8))
    with one_worker():
        assert modern_split(cell, H, heads, torch.float64) == (1, 1, (0, span))


# ---- run_layer against the reference ------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,split", splits_for(CASES))
def test_forced_split_matches_reference(name, split, dtype):
    """Variable lengths (one row of a single step), both directions, the truncated rule
    (slstm: no gradient through the recurrent product; the min cells have none to cut):
    every output, final state and gradient."""
    m, x, state = make(name, dtype)
    for reverse, truncate in [(False, False), (True, False), (False, True), (True, True)]:
        want = run_and_differentiate(reference, m, x, state, LENGTHS, reverse, truncate)
        with cpu.force_split(**split):
            got = run_and_differentiate(cpu, m, x, state, LENGTHS, reverse, truncate)
        assert got.keys() == want.keys()
        for k in want:
            what = f"{name} {split} reverse={reverse} truncate={truncate}: {k}"
            assert_close(got[k], want[k], msg=what, tol=tol(dtype, k))
    if m.spec.kind == "slstm":  # the truncated gradient is another one: the loop above tells them apart
        full = run_and_differentiate(reference, m, x, state, LENGTHS, False, False)
        cut = run_and_differentiate(reference, m, x, state, LENGTHS, False, True)
        assert not torch.allclose(full["d x"], cut["d x"])


@pytest.mark.parametrize("name,split", WIDE)
def test_forced_split_without_lengths_and_in_inference(name, split):
    """All rows running (no lengths: the kernel's other path); and under no_grad, where slstm
    keeps two state slots instead of every step's, the same outputs and final state bit for
    bit as the run that saves for the backward."""
    m, x, state = make(name, torch.float64, seed=3)
    want = run_and_differentiate(reference, m, x, state, None, True, False)
    with cpu.force_split(**split):
        got = run_and_differentiate(cpu, m, x, state, None, True, False)
        out, final, _ = cpu.run_layer(m.spec, m.cell_params(0), x, state, LENGTHS)
        with torch.no_grad():
            out_ng, final_ng, _ = cpu.run_layer(m.spec, m.cell_params(0), x, state, LENGTHS)
    for k in want:
        assert_close(got[k], want[k], msg=f"{name} {split}: {k}")
    for a, b in zip([out, *final], [out_ng, *final_ng], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["slstm", "minlstm", "mingru"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_shapes_and_cuts_match_reference(cell, data):
    """Any hidden size (slstm: any number of heads dividing it), any cuts (collapsing ones
    too: a cut at unit 0 or span, or two at the same unit), or slstm's batch groups; any
    T, B, lengths, direction, truncation; float64."""
    H = data.draw(st.integers(1, 40), label="H")
    heads = (
        data.draw(st.sampled_from([d for d in range(1, H + 1) if H % d == 0]), label="heads") if cell == "slstm" else 1
    )
    split = data.draw(
        st.one_of(
            st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4).map(lambda c: {"cuts": tuple(c)}),
            st.integers(2, 5).map(lambda n: {"groups": n}) if cell == "slstm" else st.nothing(),
        ),
        label="split",
    )
    T_, B_, I_ = data.draw(st.integers(1, 9), label="T"), data.draw(st.integers(1, 6), label="B"), 3
    seed = data.draw(st.integers(0, 2**16), label="seed")
    reverse, truncate = data.draw(st.booleans(), label="reverse"), data.draw(st.booleans(), label="truncate")
    options = {"heads": heads} if cell == "slstm" else {}
    torch.manual_seed(seed)
    m = lstmlab.Recurrent(I_, H, cell=cell, dtype=torch.float64, backend="reference", **options)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T_, B_, I_, generator=g, dtype=torch.float64).requires_grad_()
    state = tuple(
        (torch.rand if n == "n" else torch.randn)(B_, H, generator=g, dtype=torch.float64).requires_grad_()
        for n in m.spec.state_names
    )
    lengths = None
    if data.draw(st.booleans(), label="lengths"):
        # any lengths from 1 to T: the last steps may have no row running (run_layer takes
        # that; a packed batch never has it)
        lengths = torch.randint(1, T_ + 1, (B_,), generator=g)
    want = run_and_differentiate(reference, m, x, state, lengths, reverse, truncate)
    with cpu.force_split(**split):
        got = run_and_differentiate(cpu, m, x, state, lengths, reverse, truncate)
    for k in want:
        assert_close(got[k], want[k], msg=f"{cell} H={H} heads={heads} {split}: {k}")


# ---- the layer: packed, bidirectional, two layers -----------------------------------------
@pytest.mark.parametrize("name,split", splits_for(CASES))
def test_bidirectional_two_layer_packed_layer_in_forced_split_matches_reference(name, split):
    """Recurrent(backend='cpu') against 'reference' with the same state_dict: packed
    sequences of unsorted lengths, a given initial state; the output, every final state and
    the gradients of x, of each initial state and of every parameter."""
    cell, options, H = CASES[name]
    kw = dict(cell=cell, num_layers=2, bidirectional=True, dtype=torch.float64, **options)
    torch.manual_seed(2)
    ref = lstmlab.Recurrent(I, H, backend="reference", **kw)
    ours = lstmlab.Recurrent(I, H, backend="cpu", **kw)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    hx0 = [
        (torch.rand if n == "n" else torch.randn)(4, B, H, generator=g, dtype=torch.float64)
        for n in ref.spec.state_names
    ]
    lengths = torch.tensor([4, 7, 1, 6])
    results = []
    for model in (ref, ours):
        x = x0.clone().requires_grad_()
        hx = [h.clone().requires_grad_() for h in hx0]
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        with cpu.force_split(**split):
            out, state = model(packed, tuple(hx) if len(hx) > 1 else hx[0])
        state = state if isinstance(state, tuple) else (state,)
        loss = (out.data**2).sum() + sum((s * s.sin()).sum() for s in state if s.requires_grad)
        model.zero_grad()
        loss.backward()
        results.append(
            [out.data.detach(), *[s.detach() for s in state], x.grad]
            + [torch.zeros_like(h) if h.grad is None else h.grad for h in hx]
            + [p.grad for _, p in model.named_parameters()]
        )
    names = ["output", *[f"final {n}" for n in ref.spec.state_names], "d x"]
    names += [f"d {n}0" for n in ref.spec.state_names] + [f"d {n}" for n, _ in ref.named_parameters()]
    assert len(names) == len(results[0]) == len(results[1])
    for k, a, b in zip(names, results[1], results[0], strict=True):
        assert_close(a, b, msg=f"{name} {split}: {k}")


# ---- per-step gradient norms ------------------------------------------------------------------
def reference_h_grad_norms(m, x, state, lengths, reverse, cot, fcot, live):
    """||dL/dh_t|| (T, B, input order) of the reference loop, the gradient of each step's
    new h retained (0 past a sequence's length): what GradNorms documents."""
    spec, p = m.spec, m.cell_params(0)
    xs = reference.reverse_padded(x, lengths) if reverse else x
    xw = reference.input_projection(p, xs)
    valid = (torch.arange(x.shape[0]).unsqueeze(1) < lengths).unsqueeze(-1)
    hs, outs = [], []
    for t in range(x.shape[0]):
        new = reference.pointwise(spec, p, xw[t], state, False)
        new[0].retain_grad()
        hs.append(new[0])
        state = tuple(torch.where(valid[t], n, s) for n, s in zip(new, state))
        outs.append(state[0] * valid[t])
    out = torch.stack(outs)
    out = reference.reverse_padded(out, lengths) if reverse else out
    torch.autograd.backward([out, *[state[k] for k in live]], [cot, *[fcot[k] for k in live]])
    norms = torch.stack([h.grad.norm(dim=1) for h in hs]) * valid[..., 0]
    return reference.reverse_padded(norms, lengths) if reverse else norms


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "name,split",
    splits_for(
        ["slstm-heads2", "slstm-heads4-exp", "minlstm", "mingru"], [{"cuts": c} for c in CUTS[1:]] + [{"groups": 3}]
    ),
)
def test_grad_norms_in_forced_split_equal_one_worker_and_reference(name, split, reverse):
    """The norms are summed over the blocks' (ranges') parts of ||dL/dh_t||^2 (slstm in
    groups: each group's rows): the same as one worker's, and as the reference loop's state
    gradients."""
    m, x, state = make(name, torch.float64, seed=5)
    g = torch.Generator().manual_seed(6)
    cot = torch.randn(T, B, m.hidden_size, generator=g, dtype=torch.float64)
    fcot = [torch.randn(B, m.hidden_size, generator=g, dtype=torch.float64) for _ in m.spec.state_names]
    live = [k for k, n in enumerate(m.spec.state_names) if n != "m"]  # m carries no gradient
    got = {}
    for how, ctx in [("one worker", one_worker()), ("split", cpu.force_split(**split))]:
        with ctx, cpu.GradNorms() as norms:
            out, final, _ = cpu.run_layer(m.spec, m.cell_params(0), x, state, LENGTHS, reverse=reverse)
        torch.autograd.backward([out, *[final[k] for k in live]], [cot, *[fcot[k] for k in live]])
        assert len(norms.runs) == 1 and norms.c[0] is None
        got[how] = norms.h[0]
    want = reference_h_grad_norms(m, x, state, LENGTHS, reverse, cot, fcot, live)
    assert got["split"].shape == (T, B)
    assert bool((got["split"][:, 0] > 0).all())  # a gradient reaches every step of the full-length row
    assert_close(got["split"], got["one worker"], msg="split vs one worker")
    assert_close(got["split"], want, msg="split vs reference")


# ---- non-finite values ------------------------------------------------------------------------
def same_nonfinite(actual, expected, what):
    """NaN where expected has NaN, the same infinities, finite values within float64's tolerance."""
    for kind, mask in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        got, want = mask(actual), mask(expected)
        assert torch.equal(got, want), (
            f"{what}: {kind} at {got.nonzero().tolist()}, expected at {want.nonzero().tolist()}"
        )
    finite = torch.isfinite(expected)
    rtol, atol = TOL[torch.float64]
    torch.testing.assert_close(actual[finite], expected[finite], rtol=rtol, atol=atol, msg=lambda s: f"{what}\n{s}")


def nan_sites(spec, H):
    """(what, where): one input row at a running step, one input row at a padded step (row 1
    runs 3 steps; reference.mask_padding zeroes it on both backends), one entry of h0, one
    weight entry of a unit in the last block (head, range), and for slstm one of weight_hh
    (its head's block-diagonal part only)."""
    yield "x", (2, 0)
    yield "x", (5, 1)
    yield "h0", (2, H - 1)
    yield "weight_ih_l0", (H + H - 2, 1)  # gate 1 of unit H - 2
    if spec.kind == "slstm":
        yield "weight_hh_l0", (2 * H + H - 1, 0)  # gate z of the last unit


@pytest.mark.parametrize("name,split", WIDE)
def test_nan_propagates_as_in_reference_in_forced_split(name, split):
    """NaN reaches the outputs, states and gradients exactly where the reference puts it
    (within a row; for slstm's weight_hh within the head that holds it)."""
    cell, _, H = CASES[name]
    for what, where in nan_sites(lstmlab.get_cell(cell), H):
        m, x, state = make(name, torch.float64)
        with torch.no_grad():
            if what == "x":
                x[where] = math.nan
            elif what == "h0":
                state[0][where] = math.nan
            else:
                getattr(m, what)[where] = math.nan
        for reverse in (False, True):
            want = run_and_differentiate(reference, m, x, state, LENGTHS, reverse, False)
            with cpu.force_split(**split):
                got = run_and_differentiate(cpu, m, x, state, LENGTHS, reverse, False)
            if (what, where) == ("x", (5, 1)):  # padding: masked on both backends, it reaches nothing
                assert not any(v.isnan().any() for v in want.values())
            else:
                assert any(v.isnan().any() for v in want.values())  # the NaN reaches something
            assert not want["output"].isnan().all()
            for k in want:
                same_nonfinite(got[k], want[k], f"{name} {split}, NaN in {what}{where}, reverse={reverse}: {k}")


# ---- gradcheck ---------------------------------------------------------------------------------
def test_slstm_heads2_in_forced_blocks_passes_gradcheck():
    """Output and h_n of a packed bidirectional slstm layer (heads=2, H=4: blocks of one
    unit) as functions of x, h0, c0, n0 and every weight, against central differences."""
    H = 4
    m = lstmlab.Recurrent(2, H, bidirectional=True, cell="slstm", heads=2, dtype=torch.float64, backend="cpu")
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, H, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, H, generator=g, dtype=torch.float64, requires_grad=True)
    n0 = (torch.rand(2, 3, H, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    m0 = torch.randn(2, 3, H, generator=g, dtype=torch.float64)  # the stabiliser: no gradient
    lengths = torch.tensor([4, 2, 3])
    names = [n for n, _ in m.named_parameters()]

    def f(x, h0, c0, n0, *ws):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, state = torch.func.functional_call(m, dict(zip(names, ws)), (packed, (h0, c0, n0, m0)))
        return out.data, state[0]

    with cpu.force_split(cuts=(0.5,)):
        assert modern_split("slstm", H, 2, torch.float64, T_=4, B_=3) == (1, 2, (0, 1, 2))
        assert gradcheck(f, (x, h0, c0, n0, *(w.detach().requires_grad_() for w in m.parameters())))


# ---- the split the backend chooses -------------------------------------------------------------
@pytest.mark.parametrize(
    "cell,options,shape",
    [
        ("slstm", {"heads": 1}, (6, 8, 128)),
        ("slstm", {"heads": 4}, (6, 16, 128)),
        ("minlstm", {}, (16, 16, 128)),
        ("mingru", {}, (16, 16, 128)),
    ],
    ids=["slstm-heads1-B8", "slstm-heads4-B16", "minlstm", "mingru"],
)
def test_unforced_split_at_a_shared_size_matches_reference_and_one_worker(cell, options, shape):
    """Sizes the backend shares between 2 threads on its own (on a machine that has them):
    slstm at H=128 (a step's recurrent product of 0.5M to 1M multiply-adds: blocks of units
    at B=8, groups of rows at B=16), the min cells at T*B*H = 2^15 unit-steps. The result
    is the reference's and that of one worker (one thread)."""
    T_, B_, H_ = shape
    heads = options.get("heads", 1)
    torch.manual_seed(11)
    m = lstmlab.Recurrent(8, H_, cell=cell, dtype=torch.float64, backend="reference", **options)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(T_, B_, 8, generator=g, dtype=torch.float64).requires_grad_()
    state = tuple(
        (torch.rand if n == "n" else torch.randn)(B_, H_, generator=g, dtype=torch.float64).requires_grad_()
        for n in m.spec.state_names
    )
    lengths = torch.randint(1, T_ + 1, (B_,), generator=g)
    lengths[0] = T_
    groups, workers, _ = modern_split(cell, H_, heads, torch.float64, T_, B_)
    if cpu._threads() >= 2:
        assert groups >= 2 or workers >= 2
    want = run_and_differentiate(reference, m, x, state, lengths, False, False)
    got = run_and_differentiate(cpu, m, x, state, lengths, False, False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: one worker (the min cells' threshold is no tuning)
    try:
        assert modern_split(cell, H_, heads, torch.float64, T_, B_)[:2] == (1, 1)
        single = run_and_differentiate(cpu, m, x, state, lengths, False, False)
    finally:
        torch.set_num_threads(threads)
    for k in want:
        assert_close(got[k], want[k], msg=f"{cell} {options} as the backend splits it: {k}")
        assert_close(got[k], single[k], msg=f"{cell} {options} split vs one worker: {k}")


def test_reference_slstm_heads_with_no_row_running_at_a_step_matches_the_kernel():
    """Lengths all below T (run_layer takes them; a packed batch never has them): at the
    last step no row runs. The reference's block-diagonal product once failed on that
    empty batch (a reshape of 0 rows to (0, -1)); both backends hold every state there, and
    the outputs are zero, with the gradients of the autograd graph."""
    torch.manual_seed(5)
    m = lstmlab.Recurrent(3, 4, cell="slstm", heads=2, dtype=torch.float64, backend="reference")
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 1])
    state = tuple(s.clone().requires_grad_() for s in reference.zero_state(m.spec, 2, 4, x))
    want = run_and_differentiate(reference, m, x, state, lengths, False, False)
    got = run_and_differentiate(cpu, m, x, state, lengths, False, False)
    assert torch.count_nonzero(want["output"][2]) == 0
    for k in want:
        assert_close(got[k], want[k], msg=k)
