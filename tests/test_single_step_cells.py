"""lstmlab.LSTMCell / GRUCell / RNNCell (and RecurrentCell, for the kinds torch has no cell of):
against torch.nn.LSTMCell / GRUCell / RNNCell for
the torch cells (outputs, every gradient, state_dicts both ways), and for every registered
cell against lstmlab.Recurrent run over the same sequence (the cell stepped by hand must
give the layer's outputs, final state and gradients)."""

import itertools

import pytest
import torch

import lstmlab
from conftest import assert_close

I, H, B, T = 4, 6, 3, 5
CLASS = {"lstm": lstmlab.LSTMCell, "gru": lstmlab.GRUCell, "rnn": lstmlab.RNNCell}
TORCH_CELLS = [
    (torch.nn.LSTMCell, lstmlab.LSTMCell, {}),
    (torch.nn.GRUCell, lstmlab.GRUCell, {}),
    (torch.nn.RNNCell, lstmlab.RNNCell, {"nonlinearity": "tanh"}),
    (torch.nn.RNNCell, lstmlab.RNNCell, {"nonlinearity": "relu"}),
]


def _flat(s):
    return list(s) if isinstance(s, tuple) else [s]


@pytest.mark.parametrize("theirs,ours,kw", TORCH_CELLS, ids=["lstm", "gru", "rnn-tanh", "rnn-relu"])
@pytest.mark.parametrize("bias,batched,given_hx", list(itertools.product([True, False], repeat=3)))
def test_cell_matches_torch(theirs, ours, kw, bias, batched, given_hx):
    torch.manual_seed(0)
    ref = theirs(I, H, bias=bias, **kw)
    mine = ours(I, H, bias=bias, **kw)
    mine.load_state_dict(ref.state_dict(), strict=True)
    assert [(n, p.shape) for n, p in mine.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    g = torch.Generator().manual_seed(1)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, generator=g, requires_grad=True)
    hx = None
    if given_hx:
        hx = torch.randn(*lead, H, generator=g, requires_grad=True)
        if theirs is torch.nn.LSTMCell:
            hx = (hx, torch.randn(*lead, H, generator=g, requires_grad=True))
    out_r, out_o = _flat(ref(x, hx)), _flat(mine(x, hx))
    assert isinstance(mine(x, hx), tuple) == isinstance(ref(x, hx), tuple)
    for a, b in zip(out_o, out_r, strict=True):
        assert a.shape == b.shape
        assert_close(a, b)
    leaves = [x, *(_flat(hx) if hx is not None else [])]
    cot = [torch.randn(t.shape, generator=g) for t in out_r]
    gr = torch.autograd.grad(out_r, [*leaves, *ref.parameters()], cot)
    go = torch.autograd.grad(out_o, [*leaves, *mine.parameters()], cot)
    for a, b in zip(go, gr, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("theirs,ours,kw", TORCH_CELLS, ids=["lstm", "gru", "rnn-tanh", "rnn-relu"])
def test_cell_state_dict_both_ways(theirs, ours, kw):
    torch.manual_seed(2)
    mine = ours(I, H, **kw)
    ref = theirs(I, H, **kw)
    ref.load_state_dict(mine.state_dict(), strict=True)
    back = ours(I, H, **kw)
    back.load_state_dict(ref.state_dict(), strict=True)
    for (n1, a), (n2, b) in zip(mine.state_dict().items(), back.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b)


@pytest.mark.parametrize("cell", lstmlab.cell_names())
def test_cell_stepped_by_hand_is_the_layer(cell):
    """The single-step cell over a sequence = Recurrent on the reference backend."""
    dt = torch.float64
    torch.manual_seed(3)
    layer = lstmlab.Recurrent(I, H, cell=cell, backend="reference", dtype=dt)
    spec = layer.spec
    step = CLASS.get(spec.kind, lstmlab.RecurrentCell)(I, H, cell=cell, dtype=dt)
    step.load_state_dict({n.replace("_l0", ""): w for n, w in layer.state_dict().items()}, strict=True)
    assert step.truncate == layer.truncate
    g = torch.Generator().manual_seed(4)
    x = torch.randn(T, B, I, generator=g, dtype=dt, requires_grad=True)
    h0 = [torch.randn(B, spec.state_width(s) * H, generator=g, dtype=dt, requires_grad=True) for s in spec.state_names]
    if "a" in spec.state_names:  # previous gate activations live in (0, 1)
        h0[-1] = torch.rand(B, spec.state_width("a") * H, generator=g, dtype=dt).requires_grad_()
    if "n" in spec.state_names:  # slstm's normaliser is a sum of positive terms
        h0[2] = (torch.rand(B, H, generator=g, dtype=dt) + 0.5).requires_grad_()
    out_l, fin_l = layer(x, tuple(t.unsqueeze(0) for t in h0) if len(h0) > 1 else h0[0].unsqueeze(0))
    fin_l = [t.squeeze(0) for t in _flat(fin_l)]
    state, outs = tuple(h0) if len(h0) > 1 else h0[0], []
    for t in range(T):
        state = step(x[t], state)
        outs.append(_flat(state)[0])
    out_s, fin_s = torch.stack(outs), _flat(state)
    assert_close(out_s, out_l, msg="outputs")
    for a, b in zip(fin_s, fin_l, strict=True):
        assert_close(a, b, msg="final state")
    cot = [torch.randn(t.shape, generator=g, dtype=dt) for t in [out_l, *fin_l]]
    # the truncated rule (lstm1997) leaves h_0 out of the graph: no gradient in either;
    # slstm's stabiliser m carries none (it is detached), in both
    assert [t.requires_grad for t in fin_s] == [t.requires_grad for t in fin_l] == [s != "m" for s in spec.state_names]
    keep = [k for k, t in enumerate([out_l, *fin_l]) if t.requires_grad]
    outs_l, outs_s, cot = ([v[k] for k in keep] for v in ([out_l, *fin_l], [out_s, *fin_s], cot))
    gl = torch.autograd.grad(outs_l, [x, *h0, *layer.parameters()], cot, allow_unused=True)
    gs = torch.autograd.grad(outs_s, [x, *h0, *step.parameters()], cot, allow_unused=True)
    names = ["x", *spec.state_names] + [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(names, gs, gl, strict=True):
        assert (a is None) == (b is None), name
        if b is not None:
            assert_close(a, b, msg=f"gradient of {name}")
    assert gl[0] is not None and all(g is not None for g in gl[1 + len(h0) :])


def test_unbatched_and_default_state():
    m = lstmlab.LSTMCell(I, H, cell="fgr")
    h, c, a = m(torch.randn(I))
    assert h.shape == c.shape == (H,) and a.shape == (3 * H,)
    hb, cb, ab = m(torch.randn(2, I))
    assert hb.shape == (2, H) and ab.shape == (2, 3 * H)
    with pytest.raises(lstmlab.InputError, match=r"hx a_0 has shape \(2, 6\); expected \(2, 18\)"):
        m(torch.randn(2, I), (hb, cb, hb))
    assert lstmlab.RNNCell(I, H, cell="rnn-sigmoid").nonlinearity == "sigmoid"


@pytest.mark.parametrize(
    "cls,cell", [(lstmlab.LSTMCell, "gru"), (lstmlab.GRUCell, "lstm"), (lstmlab.RNNCell, "vanilla")]
)
def test_cell_of_another_kind_is_refused(cls, cell):
    with pytest.raises(lstmlab.ArgumentError, match=rf"cell='{cell}' is a \w+ cell; lstmlab.{cls.__name__} takes"):
        cls(I, H, cell=cell)
