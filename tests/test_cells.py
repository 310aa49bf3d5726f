"""Every cell's reference step: gradcheck, the 1997 Constant Error Carousel, each Greff
variant's defining property, and parameter counts written out from the equations."""

import pytest
import torch

import lstmlab
from conftest import TOL, gradcheck
from lstmlab.backends import reference
from lstmlab.cells import ACTIVATIONS

I, H = 3, 4
DT = torch.float64


def make(cell, seed=0, **kw):
    torch.manual_seed(seed)
    return lstmlab.Recurrent(I, H, cell=cell, dtype=DT, **kw)


def rand_state(spec, B, g):
    # gate activations (FGR) live in (0, 1); slstm's normaliser n in (0.5, 1.5) (it is a sum
    # of positive terms), its stabiliser m any number
    return tuple(
        torch.rand(B, spec.state_width(n) * H, generator=g, dtype=DT) + (0.5 if n == "n" else 0.0)
        if n in ("a", "n")
        else torch.randn(B, H, generator=g, dtype=DT)
        for n in spec.state_names
    )


def run(m, x, state):
    """Reference loop of layer 0 from a given state: returns the list of states."""
    p, states = m.cell_params(0), [state]
    for t in range(x.shape[0]):
        states.append(reference.step(m.spec, p, x[t], states[-1], truncate=m.truncate))
    return states


def test_registry_names():
    assert lstmlab.cell_names() == [
        "rnn-tanh",
        "rnn-sigmoid",
        "rnn-relu",
        "lstm1997",
        "lstm",
        "vanilla",
        "nig",
        "nfg",
        "nog",
        "niaf",
        "noaf",
        "np",
        "cifg",
        "fgr",
        "gru",
        "slstm",
        "minlstm",
        "mingru",
    ]


@pytest.mark.parametrize("cell", lstmlab.cell_names())
def test_reference_step_gradcheck(cell):
    """The full gradient of every cell's step (the truncated rule is, by design, not the
    derivative of the step: its own tests are below). slstm's stabiliser m is detached: its
    step is checked as the map (x, h, c, n) -> h_t with m_{t-1} given, which is exact (c_t,
    n_t and m_t are h's numerator and denominator rescaled by a constant; tests in
    test_modern_cells.py)."""
    m = make(cell, truncate=False if lstmlab.get_cell(cell).kind == "lstm" else None)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, I, generator=g, dtype=DT, requires_grad=True)
    state = rand_state(m.spec, 2, g)
    stabilised = "m" in m.spec.state_names
    state, fixed = (state[:-1], state[-1:]) if stabilised else (state, ())
    state = tuple(s.requires_grad_() for s in state)
    params = [p for p in m.parameters()]

    def step(p, x, st):
        new = reference.step(m.spec, p, x, (*st, *fixed), truncate=m.truncate)
        return new[:1] if stabilised else new

    def f(x, *rest):
        return step(m.cell_params(0), x, rest[: len(state)])

    assert gradcheck(f, (x, *state))
    # parameters too: gradcheck the step as a function of every weight
    names = [n for n, _ in m.named_parameters()]

    def fp(*ws):
        p = reference.CellParams(**{n.rsplit("_l0", 1)[0]: w for n, w in zip(names, ws)})
        return step(p, x.detach(), tuple(s.detach() for s in state))

    assert gradcheck(fp, tuple(w.detach().requires_grad_() for w in params))


def dcT_dc0(m, T, g):
    x = torch.randn(T, 1, I, generator=g, dtype=DT)
    h0, c0 = rand_state(m.spec, 1, g)[:2]
    rest = rand_state(m.spec, 1, g)[2:]

    def f(c0):
        return run(m, x, (h0, c0, *rest))[-1][1]

    return torch.autograd.functional.jacobian(f, c0).reshape(H, H)


@pytest.mark.parametrize("T", [1, 7, 60])
def test_lstm1997_truncated_gradient_is_the_identity_along_the_cec(T):
    m = make("lstm1997")
    assert m.truncate is True
    J = dcT_dc0(m, T, torch.Generator().manual_seed(T))
    assert torch.equal(J, torch.eye(H, dtype=DT))


def test_lstm1997_full_gradient_is_not_the_identity():
    m = make("lstm1997", truncate=False)
    J = dcT_dc0(m, 7, torch.Generator().manual_seed(0))
    assert (J - torch.eye(H, dtype=DT)).abs().max() > 1e-3


def test_lstm1997_truncation_still_trains_the_recurrent_weights():
    m = make("lstm1997")
    x = torch.randn(5, 2, I, dtype=DT)
    m(x)[0].sum().backward()
    assert m.weight_hh_l0.grad.abs().max() > 0


def trace_run(m, x, state):
    """Per-step traces (pre-activations and activations) from the reference pointwise."""
    p, traces = m.cell_params(0), []
    for t in range(x.shape[0]):
        tr = {}
        state = reference.pointwise(m.spec, p, reference.input_projection(p, x[t]), state, m.truncate, tr)
        traces.append((tr, state))
    return traces


def test_lstm1997_squashing_ranges():
    g, h = ACTIVATIONS["g1997"], ACTIVATIONS["h1997"]
    z = torch.linspace(-40, 40, 2001, dtype=DT)
    assert g.range == (-2.0, 2.0) and h.range == (-1.0, 1.0)
    assert g.fn(z).min() >= -2 and g.fn(z).max() <= 2
    assert torch.allclose(g.fn(z[[0, -1]]), torch.tensor([-2.0, 2.0], dtype=DT))
    assert torch.allclose(h.fn(z[[0, -1]]), torch.tensor([-1.0, 1.0], dtype=DT))
    assert torch.allclose(g.fn(z), 4 * torch.sigmoid(z) - 2) and torch.allclose(h.fn(z), 2 * torch.sigmoid(z) - 1)
    # and inside the cell: large inputs saturate g at +-2 and h within [-1, 1]
    m = make("lstm1997")
    x = 50 * torch.randn(30, 8, I, dtype=DT)
    for tr, (hh, _) in trace_run(m, x, reference.zero_state(m.spec, 8, H, x)):
        assert tr["g"].abs().max() <= 2 and hh.abs().max() <= 1
    assert tr["g"].abs().max() > 1.99


@pytest.mark.parametrize(
    "cell,check",
    [
        ("nig", lambda tr: torch.equal(tr["i"], torch.ones_like(tr["i"]))),
        ("nfg", lambda tr: torch.equal(tr["f"], torch.ones_like(tr["f"]))),
        ("nog", lambda tr: torch.equal(tr["o"], torch.ones_like(tr["o"]))),
        ("cifg", lambda tr: torch.allclose(tr["f"], 1 - tr["i"], *TOL["float64_closed_form"])),
        ("niaf", lambda tr: torch.equal(tr["g"], tr["pre"]["g"])),
        ("lstm", lambda tr: torch.allclose(tr["g"], torch.tanh(tr["pre"]["g"]))),
    ],
)
def test_variant_gates(cell, check):
    m = make(cell)
    x = torch.randn(6, 3, I, dtype=DT)
    for tr, _ in trace_run(m, x, rand_state(m.spec, 3, torch.Generator().manual_seed(0))):
        assert check(tr)


@pytest.mark.parametrize(
    "cell,out",
    [
        ("noaf", lambda tr: tr["o"] * tr["c"]),
        ("nog", lambda tr: torch.tanh(tr["c"])),
        ("vanilla", lambda tr: tr["o"] * torch.tanh(tr["c"])),
    ],
)
def test_variant_outputs(cell, out):
    m = make(cell)
    x = torch.randn(6, 3, I, dtype=DT)
    for tr, state in trace_run(m, x, rand_state(m.spec, 3, torch.Generator().manual_seed(0))):
        assert torch.allclose(state[0], out(tr), *TOL["float64_closed_form"])


@pytest.mark.parametrize("cell", ["nfg", "vanilla", "cifg", "nig"])
def test_truncated_cell_path_is_the_forget_gate_product(cell):
    """With the truncated rule the only path c_0 -> c_T is the CEC: dc_T/dc_0 = diag(prod f)
    (the identity for nfg)."""
    m = make(cell, truncate=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, I, generator=g, dtype=DT)
    state = rand_state(m.spec, 1, g)
    J = torch.autograd.functional.jacobian(lambda c0: run(m, x, (state[0], c0))[-1][1], state[1]).reshape(H, H)
    fprod = torch.stack([tr["f"][0] for tr, _ in trace_run(m, x, state)]).prod(0)
    assert torch.allclose(J, torch.diag(fprod), *TOL["float64_closed_form"])
    if cell == "nfg":
        assert torch.equal(J, torch.eye(H, dtype=DT))


def test_peepholes_read_the_cell_state():
    """vanilla: i, f see c_{t-1} and o sees c_t; np has no peephole parameters at all."""
    assert not any("weight_ch" in n for n, _ in make("np").named_parameters())
    m = make("vanilla")
    p = m.cell_params(0)
    assert p.weight_ch.shape == (3 * H,)
    x = torch.randn(1, I, dtype=DT)
    h0 = torch.randn(1, H, dtype=DT)
    c0 = torch.randn(1, H, dtype=DT)
    tr = {}
    reference.pointwise(m.spec, p, reference.input_projection(p, x), (h0, c0), False, tr)
    base = (reference.input_projection(p, x) + h0 @ p.weight_hh.t() + p.bias_hh).chunk(4, -1)
    pi, pf, po = p.weight_ch.chunk(3)
    assert torch.allclose(tr["i"], torch.sigmoid(base[0] + pi * c0))
    assert torch.allclose(tr["f"], torch.sigmoid(base[1] + pf * c0))
    assert torch.allclose(tr["o"], torch.sigmoid(base[3] + po * tr["c"]))


def test_fgr_gates_see_the_previous_gate_activations():
    m = make("fgr")
    p = m.cell_params(0)
    assert p.weight_gg.shape == (3 * H, 3 * H)  # nine H x H matrices
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, I, generator=g, dtype=DT)
    h0, c0, a0 = rand_state(m.spec, 1, g)
    tr = {}
    out = reference.pointwise(m.spec, p, reference.input_projection(p, x), (h0, c0, a0), False, tr)
    base = (reference.input_projection(p, x) + h0 @ p.weight_hh.t() + p.bias_hh).chunk(4, -1)
    fb = (a0 @ p.weight_gg.t()).chunk(3, -1)
    pi, pf, po = p.weight_ch.chunk(3)
    assert torch.allclose(tr["i"], torch.sigmoid(base[0] + fb[0] + pi * c0))
    assert torch.allclose(tr["f"], torch.sigmoid(base[1] + fb[1] + pf * c0))
    assert torch.allclose(tr["o"], torch.sigmoid(base[3] + fb[2] + po * tr["c"]))
    assert torch.equal(out[2], torch.cat([tr["i"], tr["f"], tr["o"]], -1))


def test_gru_and_rnn_sigmoid_equations():
    g = torch.Generator().manual_seed(0)
    m = make("rnn-sigmoid")
    p = m.cell_params(0)
    x, h = torch.randn(2, I, generator=g, dtype=DT), torch.randn(2, H, generator=g, dtype=DT)
    want = torch.sigmoid(x @ p.weight_ih.t() + p.bias_ih + h @ p.weight_hh.t() + p.bias_hh)
    assert torch.allclose(reference.step(m.spec, p, x, (h,))[0], want)


# Parameter counts written out from the equations, one layer and direction, torch's layout
# (two bias vectors per gate block): 4 gates for i, f, g, o; peepholes one H-vector a gate;
# minlstm / mingru: no recurrent weights, one bias; slstm: H x H/heads recurrent blocks.
def count(gates, peep=0, fgr=0, recurrent=True, heads=1):
    if not recurrent:
        return gates * (H * I + H)
    return gates * (H * I + H * H // heads + 2 * H) + peep * H + fgr * H * H


@pytest.mark.parametrize(
    "cell,n",
    [
        ("rnn-tanh", count(1)),
        ("rnn-sigmoid", count(1)),
        ("rnn-relu", count(1)),
        ("lstm1997", count(3)),
        ("lstm", count(4)),
        ("vanilla", count(4, 3)),
        ("nig", count(3, 2)),
        ("nfg", count(3, 2)),
        ("nog", count(3, 2)),
        ("niaf", count(4, 3)),
        ("noaf", count(4, 3)),
        ("np", count(4)),
        ("cifg", count(3, 2)),
        ("fgr", count(4, 3, 9)),
        ("gru", count(3)),
        ("slstm", count(4)),
        ("minlstm", count(3, recurrent=False)),
        ("mingru", count(2, recurrent=False)),
    ],
)
def test_parameter_counts(cell, n):
    m = make(cell)
    assert sum(p.numel() for p in m.parameters()) == n == m.spec.num_parameters(I, H)


def test_parameter_count_of_slstm_with_heads():
    m = make("slstm", heads=2)
    assert sum(p.numel() for p in m.parameters()) == count(4, heads=2) == m.spec.num_parameters(I, H)


def test_forget_bias_and_1997_init():
    m = make("lstm", forget_bias=2.5, input_bias=-3.0, num_layers=2, bidirectional=True)
    for sfx in ("_l0", "_l1_reverse"):  # torch's gate order: i f g o
        b_ih, b_hh = getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)
        assert torch.equal(b_ih[H : 2 * H], torch.full((H,), 2.5, dtype=DT))
        assert torch.equal(b_ih[:H], torch.full((H,), -3.0, dtype=DT))
        assert torch.equal(b_hh[: 2 * H], torch.zeros(2 * H, dtype=DT))
    m = make("cifg", input_bias=-2.0)  # cifg: gates i g o, its f = 1 - i
    assert torch.equal(m.bias_ih_l0[:H] + m.bias_hh_l0[:H], torch.full((H,), -2.0, dtype=DT))
    m = lstmlab.Recurrent(I, 8, cell="lstm1997", init="1997", dtype=DT)
    o = m.spec.gates.index("o")
    ob = (m.bias_ih_l0 + m.bias_hh_l0)[o * 8 : (o + 1) * 8]
    assert torch.equal(ob, -torch.tensor([1, 2, 3, 4, 1, 2, 3, 4], dtype=DT))
    assert m.weight_hh_l0.abs().max() <= 0.1 and m.weight_ih_l0.abs().max() <= 0.1


def test_learned_initial_state_and_cell_states():
    m = make("vanilla", learn_init=True, return_cell_states=True, num_layers=2)
    with torch.no_grad():
        m.initial_h.normal_()
        m.initial_c.normal_()
    x = torch.randn(5, 2, I, dtype=DT)
    out, (h, c), cells = m(x)
    out2, (h2, c2) = make("vanilla", num_layers=2)(
        x, (m.initial_h.unsqueeze(1).expand(-1, 2, -1).detach(), m.initial_c.unsqueeze(1).expand(-1, 2, -1).detach())
    )
    assert torch.allclose(out, out2) and torch.allclose(c, c2)
    assert torch.equal(cells[-1], c[-1])  # last step's cell state of the last layer
    out.sum().backward()
    assert m.initial_h.grad.abs().sum() > 0 and m.initial_c.grad.abs().sum() > 0


def test_fgr_returns_and_accepts_its_gate_state():
    m = make("fgr")
    x = torch.randn(6, 2, I, dtype=DT)
    out, (h, c, a) = m(x)
    assert a.shape == (1, 2, 3 * H) and (a > 0).all() and (a < 1).all()
    # continuing from the returned state equals one run over the whole sequence
    o1, s1 = m(x[:3])
    o2, s2 = m(x[3:], s1)
    assert torch.allclose(torch.cat([o1, o2]), out) and torch.allclose(s2[2], a)


def test_cell_options_build_variants():
    m = lstmlab.Recurrent(I, H, cell="lstm", peepholes=True)
    assert m.spec.peepholes and m.spec.name == "lstm[peepholes=True]"
    assert sum(p.numel() for p in m.parameters()) == count(4, 3)
