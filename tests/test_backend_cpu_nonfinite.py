"""Non-finite values through the cpu backend: NaN, +inf or -inf in the input at one step,
in the initial state or in one entry of any weight tensor give, for every registered cell,
NaN exactly where the reference backend has NaN, +-inf where it has +-inf, and equal finite
values elsewhere: in the outputs, the final states, the cell states and every gradient."""

import math

import pytest
import torch

import lstmlab
from conftest import TOL, saturated_gates
from lstmlab.backends import cpu, reference

# the cells the kernel computes (all registered ones)
CELLS = [c for c in lstmlab.cell_names() if cpu.supports(lstmlab.get_cell(c))[0]]
VALUES = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
T, B, I, H = 4, 3, 3, 5


pytestmark = pytest.mark.usefixtures("cpu_backend")


def same_nonfinite(actual, expected, dtype, what, tol=None):
    """NaN where expected has NaN, the same infinities, finite values within tolerance
    (TOL[tol], or TOL[dtype])."""
    for name, mask in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        got, want = mask(actual), mask(expected)
        assert torch.equal(got, want), (
            f"{what}: {name} at {got.nonzero().tolist()}, expected at {want.nonzero().tolist()}"
        )
    finite = torch.isfinite(expected)
    rtol, atol = TOL[tol or dtype]
    torch.testing.assert_close(actual[finite], expected[finite], rtol=rtol, atol=atol, msg=lambda m: f"{what}\n{m}")


def sites(spec):
    """(where, index) of every injection: x at one step, each initial state, each weight."""
    m = lstmlab.Recurrent(I, H, cell=spec, backend="reference")
    yield "x", (1, 1, 2)
    for n in spec.state_names:
        yield f"state {n}", (1, 2)
    for name, p in m.named_parameters():
        yield name, (p.shape[0] // 2 + 1, 1)[: p.dim()]


def case(spec, dtype, where, index, value):
    torch.manual_seed(0)
    m = lstmlab.Recurrent(I, H, cell=spec, dtype=dtype, backend="reference")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=dtype)
    # FGR's state includes gate activations, which live in (0, 1)
    state = [
        (torch.rand if n == "a" else torch.randn)(B, spec.state_width(n) * H, generator=g, dtype=dtype)
        for n in spec.state_names
    ]
    with torch.no_grad():
        if where == "x":
            x[index] = value
        elif where.startswith("state "):
            state[spec.state_names.index(where[6:])][index] = value
        else:
            getattr(m, where)[index] = value
    x.requires_grad_()
    state = tuple(s.requires_grad_() for s in state)
    return m, x, state


def run(backend, m, x, state, truncate, lengths=None, reverse=False):
    lstm = m.spec.kind == "lstm"
    out, final, cells = backend.run_layer(
        m.spec, m.cell_params(0), x, state, lengths, reverse, truncate=truncate, return_cells=lstm
    )
    outs = [out, *final] + ([cells] if lstm else [])
    g = torch.Generator().manual_seed(2)
    cot = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    leaves = [x, *state, *m.parameters()]
    # slstm's m_n carries no gradient (detached on both backends): its value is compared
    pairs = [(o, c) for o, c in zip(outs, cot) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], leaves, [c for _, c in pairs], allow_unused=True)
    names = ["output", *(f"final {n}" for n in m.spec.state_names)] + (["cells"] if lstm else [])
    names += ["d x", *(f"d {n}0" for n in m.spec.state_names), *(f"d {n}" for n, _ in m.named_parameters())]
    return dict(
        zip(
            names, [o.detach() for o in outs] + [torch.zeros_like(v) if d is None else d for v, d in zip(leaves, grads)]
        )
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("cell", CELLS)
def test_nonfinite_values_propagate_as_in_reference(cell, value, dtype):
    spec = lstmlab.get_cell(cell)
    for truncate in [False, True] if spec.kind == "lstm" else [None]:
        for where, index in sites(spec):
            m, x, state = case(spec, dtype, where, index, VALUES[value])
            want = run(reference, m, x, state, truncate)
            got = run(cpu, m, x, state, truncate)
            for name in want:
                same_nonfinite(
                    got[name], want[name], dtype, f"{cell}, {value} in {where}{index}, truncate={truncate}: {name}"
                )


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-relu", "fgr"])
def test_nonfinite_propagation_in_slices_and_groups(cell):
    """The same with hidden units in parallel slices and with batch rows in groups."""
    spec = lstmlab.get_cell(cell)
    for split in ({"cuts": (2 / H,)}, {"groups": 2}):  # slices (0, 2, H); two groups
        with cpu.force_split(**split):
            for where, index in sites(spec):
                for value in VALUES.values():
                    m, x, state = case(spec, torch.float64, where, index, value)
                    want = run(reference, m, x, state, None)
                    got = run(cpu, m, x, state, None)
                    for name in want:
                        same_nonfinite(got[name], want[name], torch.float64, f"{cell}, {value} in {where}: {name}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-tanh", "lstm1997", "fgr"])
def test_nonfinite_values_with_variable_lengths(cell, reverse):
    """Sequences of unequal length: the padding is 0 on both backends (as torch pads packed
    output) and the held states and every gradient carry the same non-finite values."""
    spec = lstmlab.get_cell(cell)
    lengths = torch.tensor([4, 2, 3])
    for where, index in sites(spec):
        for value in VALUES.values():
            m, x, state = case(spec, torch.float64, where, index, value)
            want = run(reference, m, x, state, None, lengths, reverse)
            got = run(cpu, m, x, state, None, lengths, reverse)
            assert torch.equal(want["output"][2:, 1], torch.zeros(2, H, dtype=torch.float64))
            for name in want:
                same_nonfinite(
                    got[name],
                    want[name],
                    torch.float64,
                    f"{cell}, {value} in {where}{index}, reverse={reverse}: {name}",
                )


@pytest.mark.parametrize("cell", ["lstm", "vanilla", "gru", "fgr", "slstm", "minlstm", "mingru"])
def test_a_row_that_never_runs_keeps_its_nonfinite_state_out_of_every_gradient(cell):
    """A length-0 row (run_layer takes it; a packed batch cannot have one) with NaN or inf in
    its initial state or input: it holds its state and outputs 0, and, as the reference
    leaves it out of every step, none of its values reaches the weights' gradients (its dP is
    0 and 0 * NaN would be NaN: the kernel's weight-gradient products read a zeroed copy of
    its initial state)."""
    spec = lstmlab.get_cell(cell)
    lengths = torch.tensor([4, 0, 3])
    for where, index in sites(spec):
        if not (where == "x" or where.startswith("state ")):
            continue
        for value in VALUES.values():
            m, x, state = case(spec, torch.float64, where, index, value)  # row 1 is the one that never runs
            want = run(reference, m, x, state, None, lengths)
            got = run(cpu, m, x, state, None, lengths)
            for name in want:
                same_nonfinite(got[name], want[name], torch.float64, f"{cell}, {value} in {where}{index}: {name}")
            for name, _ in m.named_parameters():
                assert torch.isfinite(got[f"d {name}"]).all(), f"{cell}, {value} in {where}: d {name}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ["g_min", "identity"])
@pytest.mark.parametrize("cell", ["minlstm", "mingru"])
def test_saturated_gates_times_unbounded_candidates(cell, activation, dtype):
    """A gate past the end of exp's range is exactly 0, as torch's sigmoid makes it (not
    exp's clamped value, 1.6e-38 in float32, which a candidate of 1e38 magnifies to 1.6),
    and just inside it has torch's denormal values (times 1e38: values of order 1)."""
    m, x, h0 = saturated_gates(cell, activation, dtype, T=5)
    want = run(reference, m, x, (h0[0],), None)
    got = run(cpu, m, x, (h0[0],), None)
    tol = "float32_cancelling" if dtype == torch.float32 else None
    for name in want:
        same_nonfinite(got[name], want[name], dtype, f"{cell} {activation}: {name}", tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sigmoid_at_the_last_value_before_zero(dtype):
    """minGRU with z's pre-activation at the two values either side of where torch's sigmoid
    becomes 0 (exp(-x) overflows) and an infinite candidate: 0 * inf = NaN below, inf above."""
    below, above = (
        (-709.7827128933841, -709.782712893384) if dtype == torch.float64 else (-88.72283935546875, -88.72283172607422)
    )
    m = lstmlab.Recurrent(1, 2, cell="mingru", activation="identity", dtype=dtype, backend="reference")
    with torch.no_grad():
        m.weight_ih_l0.zero_()
        m.bias_ih_l0.copy_(torch.tensor([below, above, math.inf, math.inf], dtype=dtype))
    assert torch.sigmoid(torch.tensor([below, above], dtype=dtype)).tolist()[0] == 0.0
    x, h0 = torch.zeros(1, 1, 1, dtype=dtype, requires_grad=True), torch.zeros(1, 2, dtype=dtype, requires_grad=True)
    want = run(reference, m, x, (h0,), None)
    got = run(cpu, m, x, (h0,), None)
    assert torch.isnan(want["output"][0, 0, 0]) and torch.isposinf(want["output"][0, 0, 1])
    for name in want:
        same_nonfinite(got[name], want[name], dtype, f"sigmoid's last value, {dtype}: {name}")
