"""Derivatives of the cpu backend's derivatives (backward with create_graph=True): float64
gradgradcheck for every registered cell (variable lengths, reverse, cell states), the
truncated rule's second derivatives against the reference backend's (the truncated gradient
is not a true gradient, so finite differences do not apply to it), a gradient penalty
against torch.nn.LSTM / GRU with the same weights, and a Hessian-vector product against the
reference backend's."""

import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab.backends import cpu, reference

# the cells the kernel computes (all registered ones)
CELLS = [c for c in lstmlab.cell_names() if cpu.supports(lstmlab.get_cell(c))[0]]
F64 = torch.float64
PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch", "weight_gg")


pytestmark = pytest.mark.usefixtures("cpu_backend")


def layer_function(backend, spec, names, lengths, reverse, truncate):
    """(x, initial state..., parameters...) -> every output of one run_layer."""
    lstm = spec.kind == "lstm"
    S = len(spec.state_names)

    def f(x, *rest):
        state, params = rest[:S], dict(zip(names, rest[S:]))
        p = reference.CellParams(*[params.get(f"{n}_l0") for n in PARAMS])
        out, final, cells = backend.run_layer(
            spec, p, x, state, lengths, reverse=reverse, truncate=truncate, return_cells=lstm
        )
        if spec.kind == "slstm":
            # c_n and n_n are scaled by exp(-m_n), and m is a constant to autograd (detached on
            # both backends): their derivatives are those with m fixed, which finite
            # differences do not see; out and h_n do not depend on m
            return out, final[0]
        return (out, *final) + ((cells,) if lstm else ())

    return f


def case(cell, seed=0, T=3, B=2, I=2, H=3):
    torch.manual_seed(seed)
    m = lstmlab.Recurrent(I, H, cell=cell, dtype=F64, backend="cpu")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=F64, requires_grad=True)
    # slstm's stabiliser m carries no gradient on either backend (a constant to autograd; the
    # outputs do not depend on it but through the initial m0 against c0, n0): not an input
    # the checks differentiate
    state = [
        (torch.rand if n == "a" else torch.randn)(B, m.spec.state_width(n) * H, generator=g, dtype=F64).requires_grad_(
            n != "m"
        )
        for n in m.spec.state_names
    ]
    names = [n for n, _ in m.named_parameters()]
    return m, (x, *state, *[p.detach().clone().requires_grad_() for p in m.parameters()]), names


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([3, 2], True), ([2, 3], False)])
def test_gradgradcheck(cell, lengths, reverse):
    m, inputs, names = case(cell)
    lengths = None if lengths is None else torch.tensor(lengths)
    f = layer_function(cpu, m.spec, names, lengths, reverse, truncate=False)
    assert torch.autograd.gradgradcheck(f, inputs)


def second_derivatives(backend, spec, names, inputs, lengths, reverse, truncate):
    """d/d inputs of <v, d<w, outputs>/d inputs>: the backward's own gradient, with fixed
    random cotangents w (of the outputs) and v (of the first gradients)."""
    outs = layer_function(backend, spec, names, lengths, reverse, truncate)(*inputs)
    g = torch.Generator().manual_seed(7)
    w = [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
    first = torch.autograd.grad(outs, inputs, w, create_graph=True)
    v = [torch.randn(t.shape, generator=g, dtype=F64) for t in first]
    live = [(a, b) for a, b in zip(first, v) if a.requires_grad]  # some are constants under truncation
    return first, torch.autograd.grad(
        [a for a, _ in live], inputs, [b for _, b in live], allow_unused=True, materialize_grads=True
    )


@pytest.mark.parametrize("cell", [c for c in CELLS if lstmlab.get_cell(c).kind == "lstm"])
@pytest.mark.parametrize("truncate", [True, False])
def test_second_derivatives_match_reference(cell, truncate):
    """Also the truncated rule, whose second derivatives are defined by the reference
    backend (the derivative of its truncated backward)."""
    m, inputs, names = case(cell, seed=3, T=4, B=3, I=2, H=4)
    lengths = torch.tensor([4, 1, 3])
    for reverse in (False, True):
        got = second_derivatives(cpu, m.spec, names, inputs, lengths, reverse, truncate)
        want = second_derivatives(reference, m.spec, names, inputs, lengths, reverse, truncate)
        for kind, a, b in (("first", got[0], want[0]), ("second", got[1], want[1])):
            for name, x, y in zip(["x", *m.spec.state_names, *names], a, b, strict=True):
                assert_close(x, y, msg=f"{cell} truncate={truncate} reverse={reverse}: {kind} d {name}")


def torch_twin(cell, mine):
    """The torch.nn module of a cell with the same weights as `mine`."""
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    twin = cls(
        mine.input_size, mine.hidden_size, num_layers=mine.num_layers, bidirectional=mine.bidirectional, dtype=F64
    )
    twin.load_state_dict(mine.state_dict())
    return twin


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("wrt", ["input", "weights"])
def test_gradient_penalty_matches_torch(cell, wrt):
    """g = d loss / d (input or weights) with create_graph=True, then ||g|| backward: the
    penalty's gradient to every weight equals torch.nn's (it used to be dropped)."""
    torch.manual_seed(0)
    ours = lstmlab.Recurrent(3, 5, cell=cell, num_layers=2, bidirectional=True, dtype=F64, backend="cpu")
    twin = torch_twin(cell, ours)
    x = torch.randn(6, 4, 3, dtype=F64)
    grads = []
    for m in (ours, twin):
        xi = x.clone().requires_grad_()
        out, _ = m(xi)
        loss = out.square().sum()
        (g,) = torch.autograd.grad(loss, [xi if wrt == "input" else m.weight_hh_l0], create_graph=True)
        m.zero_grad()
        g.norm().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[1]:
        assert_close(grads[0][n], grads[1][n], msg=f"{cell}: penalty gradient of {n}")
    assert grads[1]["weight_ih_l0"].norm() > 0.1  # the penalty reaches the weights


@pytest.mark.parametrize("cell", ["lstm", "fgr", "gru", "rnn-tanh"])
def test_hessian_vector_product_matches_reference(cell):
    """torch.autograd.functional.hvp of a scalar loss in all the weights (flattened)."""
    ms = {}
    for backend in ("cpu", "reference"):
        torch.manual_seed(1)
        ms[backend] = lstmlab.Recurrent(2, 4, cell=cell, dtype=F64, backend=backend)
    x = torch.randn(5, 3, 2, dtype=F64)
    shapes = [p.shape for p in ms["cpu"].parameters()]
    names = [n for n, _ in ms["cpu"].named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in ms["cpu"].parameters()])
    v = torch.randn(flat.shape, generator=torch.Generator().manual_seed(2), dtype=F64)

    def loss_of(m):
        def loss(w):
            params = dict(zip(names, torch.split(w, [s.numel() for s in shapes])))
            params = {n: t.view(s) for (n, t), s in zip(params.items(), shapes)}
            out, _ = torch.func.functional_call(m, params, (x,))
            return out.sin().sum()

        return loss

    got = torch.autograd.functional.hvp(loss_of(ms["cpu"]), flat, v)[1]
    want = torch.autograd.functional.hvp(loss_of(ms["reference"]), flat, v)[1]
    assert_close(got, want)
    assert want.norm() > 1e-3


def test_grad_norms_of_a_differentiable_backward_are_none():
    """GradNorms come from the kernel's backward; create_graph=True runs the reference's."""
    m = lstmlab.Recurrent(2, 3, dtype=F64, backend="cpu")
    x = torch.randn(4, 2, 2, dtype=F64)
    with cpu.GradNorms() as norms:
        out, _ = m(x)
    torch.autograd.grad(out.sum(), [m.weight_hh_l0], retain_graph=True)
    assert norms.h[0].shape == (4, 2)
    torch.autograd.grad(out.sum(), [m.weight_hh_l0], create_graph=True)
    assert norms.h[0] is None and norms.c[0] is None


@pytest.mark.parametrize("packed", [False, True])
def test_grad_norms_of_a_differentiable_backward_in_both_directions(packed):
    """The same for the reverse direction of a bidirectional layer, packed or not."""
    from torch.nn.utils.rnn import pack_padded_sequence

    m = lstmlab.Recurrent(2, 3, bidirectional=True, dtype=F64, backend="cpu")
    x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    inp = pack_padded_sequence(x, torch.tensor([4, 3])) if packed else x
    with cpu.GradNorms() as norms:
        out, _ = m(inp)
    y = (out.data if packed else out).sum()
    torch.autograd.grad(y, [x], retain_graph=True)
    assert [h.shape for h in norms.h] == [(4, 2), (4, 2)]
    torch.autograd.grad(y, [x], create_graph=True)
    assert norms.h == [None, None] and norms.c == [None, None]
