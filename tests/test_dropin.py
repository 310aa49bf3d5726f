"""lstmlab.LSTM / GRU / RNN and Recurrent as drop-ins for torch.nn.LSTM / GRU / RNN: the
positional order, signatures, attributes, warnings, proj_size, state_dicts both ways and
the edge cases (batch 0, no time steps), each against torch itself."""

import inspect
import itertools
import typing
import warnings

import pytest
import torch

import lstmlab
from conftest import assert_close

PAIRS = [(torch.nn.LSTM, lstmlab.LSTM), (torch.nn.GRU, lstmlab.GRU), (torch.nn.RNN, lstmlab.RNN)]
LSTM_CELLS = [n for n in lstmlab.cell_names() if lstmlab.get_cell(n).kind == "lstm"]


def _positional(sig):
    return [
        (p.name, p.default) for p in sig.parameters.values() if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD
    ]


@pytest.mark.parametrize("theirs,ours", PAIRS)
def test_signature_is_torchs(theirs, ours):
    documented = _positional(inspect.signature(typing.get_overloads(theirs.__init__)[0]))
    mine = _positional(inspect.signature(ours.__init__))
    # torch's *args go to RNNBase(mode, input_size, ..., bidirectional, proj_size, device,
    # dtype) (RNN takes nonlinearity out first), so GRU and RNN take proj_size positionally
    # before device too, though their documented overload leaves it out.
    if theirs is not torch.nn.LSTM:
        at = [n for n, _ in documented].index("device")
        documented.insert(at, ("proj_size", 0))
    assert mine == documented
    kw_only = {p.name for p in inspect.signature(ours.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY}
    assert "cell" in kw_only


@pytest.mark.parametrize(
    "theirs,ours,args",
    [
        (torch.nn.LSTM, lstmlab.LSTM, (3, 8, 2, False, True, 0.25, True, 5, "cpu", torch.float64)),
        (torch.nn.GRU, lstmlab.GRU, (3, 8, 2, False, True, 0.25, True, 0, "cpu", torch.float64)),
        (torch.nn.RNN, lstmlab.RNN, (3, 8, 2, "relu", False, True, 0.25, True, 0, "cpu", torch.float64)),
        (torch.nn.LSTM, lstmlab.Recurrent, (3, 8, 2, True, False, 0.0, True, 2)),
    ],
)
def test_positional_arguments_and_attributes_as_torch(theirs, ours, args):
    ref, mine = theirs(*args), ours(*args, backend="reference")
    for name in [
        "mode",
        "input_size",
        "hidden_size",
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
        "_flat_weights_names",
        "_all_weights",
    ]:
        assert getattr(mine, name) == getattr(ref, name), name
    if theirs is torch.nn.RNN:
        assert mine.nonlinearity == ref.nonlinearity == "relu"
    assert {k: (v.shape, v.dtype) for k, v in mine.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in ref.state_dict().items()
    }
    assert [[w.shape for w in ws] for ws in mine.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
    params = dict(mine.named_parameters())
    assert all(w is params[n] for w, n in zip(mine._flat_weights, mine._flat_weights_names, strict=True))


def test_recurrent_third_positional_is_num_layers():
    assert lstmlab.Recurrent(10, 20, 2).num_layers == 2 == torch.nn.LSTM(10, 20, 2).num_layers
    with pytest.raises(lstmlab.ArgumentError, match=r"num_layers='gru' is invalid.*keyword-only.*cell='gru'"):
        lstmlab.Recurrent(10, 20, "gru")


def test_flat_weights_follow_reassignment_to_and_functional_call():
    m = lstmlab.LSTM(3, 4, 2, backend="reference")
    new = torch.nn.Parameter(torch.zeros(16, 4))
    m.weight_hh_l1 = new
    assert m._flat_weights[m._flat_weights_names.index("weight_hh_l1")] is new
    m.double()
    assert m._flat_weights[0].dtype == torch.float64
    assert all(w is getattr(m, n) for w, n in zip(m._flat_weights, m._flat_weights_names))
    # functional_call swaps parameters behind __setattr__; forward resyncs as torch does
    ref = torch.nn.LSTM(3, 4, 2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    params = dict(ref.named_parameters())
    out_ref, _ = torch.func.functional_call(ref, params, (x,))
    out_ours, _ = torch.func.functional_call(m, params, (x,))
    assert_close(out_ours, out_ref)


@pytest.mark.parametrize("theirs,ours", PAIRS)
def test_dropout_on_one_layer_warns_as_torch(theirs, ours):
    caught = {}
    for cls in (theirs, ours):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            cls(3, 4, dropout=0.5)
        caught[cls] = [(x.category, str(x.message)) for x in w]
    assert caught[ours] == caught[theirs] and len(caught[theirs]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(3, 4, 2, dropout=0.5)


@pytest.mark.parametrize(
    "cls,cell,kind",
    [(lstmlab.LSTM, c, "lstm") for c in LSTM_CELLS]
    + [(lstmlab.GRU, "gru", "gru"), (lstmlab.RNN, "rnn-sigmoid", "rnn")],
)
def test_cell_keyword_takes_cells_of_the_same_kind(cls, cell, kind):
    m = cls(3, 4, cell=cell, backend="reference")
    assert m.spec.name == cell and m.spec.kind == kind
    out, _ = m(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 4)


@pytest.mark.parametrize(
    "cls,cell,pattern",
    [
        (lstmlab.LSTM, "gru", r"cell='gru' is a gru cell; lstmlab.LSTM takes a lstm cell: lstm1997, lstm"),
        (lstmlab.GRU, "lstm", r"cell='lstm' is a lstm cell; lstmlab.GRU takes a gru cell: gru"),
        (lstmlab.RNN, "fgr", r"cell='fgr' is a lstm cell; lstmlab.RNN takes a rnn cell: rnn-tanh"),
    ],
)
def test_cell_of_another_kind_is_refused(cls, cell, pattern):
    with pytest.raises(lstmlab.ArgumentError, match=pattern):
        cls(3, 4, cell=cell)


def test_rnn_nonlinearity_and_cell():
    assert lstmlab.RNN(3, 4, cell="rnn-sigmoid").nonlinearity == "sigmoid"
    assert lstmlab.RNN(3, 4, nonlinearity="relu").spec.name == "rnn-relu"
    with pytest.raises(lstmlab.ArgumentError, match=r"nonlinearity='relu' contradicts cell='rnn-sigmoid'"):
        lstmlab.RNN(3, 4, nonlinearity="relu", cell="rnn-sigmoid")


# ---- proj_size ---------------------------------------------------------------------------
I, H, P, B, T = 5, 7, 3, 4, 6


@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,given_hx,bias",
    list(itertools.product([1, 2], [False, True], [False, True], [False, True], [True]))
    + [(2, True, False, True, False)],
)
def test_proj_size_matches_torch(num_layers, bidirectional, batch_first, given_hx, bias):
    torch.manual_seed(0)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias, proj_size=P)
    ref = torch.nn.LSTM(I, H, **kw)
    ours = lstmlab.LSTM(I, H, **kw, backend="reference")
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert ours.weight_hr_l0.shape == (P, H) and ours.weight_hh_l0.shape == (4 * H, P)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, requires_grad=True)
    LD = num_layers * (2 if bidirectional else 1)
    hx = None
    if given_hx:
        hx = (
            torch.randn(LD, B, P, generator=g, requires_grad=True),
            torch.randn(LD, B, H, generator=g, requires_grad=True),
        )
    out_r, (h_r, c_r) = ref(x, hx)
    out_o, (h_o, c_o) = ours(x, hx)
    D = 2 if bidirectional else 1
    assert out_o.shape == out_r.shape == ((B, T, D * P) if batch_first else (T, B, D * P))
    for a, b, what in [(out_o, out_r, "output"), (h_o, h_r, "h_n"), (c_o, c_r, "c_n")]:
        assert_close(a, b, msg=what)
    leaves = [x, *(hx or ())]
    cot = [torch.randn(t.shape, generator=g) for t in (out_r, h_r, c_r)]
    gr = torch.autograd.grad((out_r, h_r, c_r), [*leaves, *ref.parameters()], cot)
    go = torch.autograd.grad((out_o, h_o, c_o), [*leaves, *ours.parameters()], cot)
    labels = ["x", "h_0", "c_0"][: len(leaves)] + [n for n, _ in ref.named_parameters()]
    for label, a, b in zip(labels, go, gr, strict=True):
        assert_close(a, b, msg=f"gradient of {label}")


def test_proj_size_init_is_torchs():
    m = lstmlab.LSTM(3, 64, proj_size=16)
    bound = 64**-0.5
    w = m.weight_hr_l0.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert lstmlab.LSTM(3, 8, proj_size=0).state_dict().keys() == torch.nn.LSTM(3, 8).state_dict().keys()


@pytest.mark.parametrize("cell", LSTM_CELLS)
def test_proj_size_for_every_lstm_cell(cell):
    """h is P wide and is the projection of o * act(c): with weight_hr's rows the first P
    unit vectors, h equals the first P units of the unprojected cell's h (fed the same h)."""
    torch.manual_seed(2)
    m = lstmlab.Recurrent(I, H, 2, bidirectional=True, proj_size=P, cell=cell, backend="reference", dtype=torch.float64)
    assert m.weight_ih_l1.shape[1] == 2 * P and m.weight_hr_l1_reverse.shape == (P, H)
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, state = m(x)
    assert out.shape == (T, B, 2 * P) and state[0].shape == (4, B, P) and state[1].shape == (4, B, H)
    one = lstmlab.Recurrent(I, H, proj_size=P, cell=cell, backend="reference", dtype=torch.float64)
    full = lstmlab.Recurrent(I, H, cell=cell, backend="reference", dtype=torch.float64)
    with torch.no_grad():
        one.weight_hr_l0.copy_(torch.eye(H, dtype=torch.float64)[:P])
        for name, w in full.named_parameters():
            if name == "weight_hh_l0":  # the recurrent weights see only the first P units
                w.zero_()
                w[:, :P] = one.weight_hh_l0
            else:
                w.copy_(getattr(one, name))
    out_p, _ = one(x)
    out_f, _ = full(x)
    assert_close(out_p, out_f[..., :P])


@pytest.mark.parametrize("kwargs", [dict(proj_size=-1), dict(proj_size=7), dict(proj_size=9), dict(proj_size=2.5)])
def test_proj_size_validation_as_torch(kwargs):
    with pytest.raises(Exception) as theirs:
        torch.nn.LSTM(3, 7, **kwargs)
    with pytest.raises(lstmlab.ArgumentError, match=rf"proj_size={kwargs['proj_size']!r} is invalid") as ours:
        lstmlab.LSTM(3, 7, **kwargs)
    assert isinstance(ours.value, type(theirs.value))


@pytest.mark.parametrize(
    "make",
    [
        lambda: lstmlab.GRU(3, 7, proj_size=2),
        lambda: lstmlab.RNN(3, 7, proj_size=2),
        lambda: lstmlab.Recurrent(3, 7, proj_size=2, cell="gru"),
        lambda: lstmlab.Recurrent(3, 7, proj_size=2, cell="rnn-tanh"),
    ],
)
def test_proj_size_is_for_lstm_cells_only(make):
    with pytest.raises(lstmlab.ArgumentError, match=r"proj_size") as ours:
        make()
    assert isinstance(ours.value, ValueError)  # torch's GRU(proj_size=2) raises ValueError


# ---- edges: batch 0, no time steps ---------------------------------------------------------
@pytest.mark.parametrize("theirs,ours", PAIRS)
def test_empty_batch_as_torch(theirs, ours):
    torch.manual_seed(3)
    ref = theirs(3, 4, 2, bidirectional=True)
    mine = ours(3, 4, 2, bidirectional=True, backend="reference")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(5, 0, 3, requires_grad=True)
    out_r, st_r = ref(x)
    out_o, st_o = mine(x)
    assert out_o.shape == out_r.shape == (5, 0, 8)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]
    assert [s.shape for s in flat(st_o)] == [s.shape for s in flat(st_r)]
    (gx,) = torch.autograd.grad(out_o.sum(), x)
    assert gx.shape == x.shape


@pytest.mark.parametrize("theirs,ours", PAIRS)
@pytest.mark.parametrize("shape", [(0, 2, 3), (0, 0, 3), (0, 3)])
def test_no_time_steps_raises_as_torch(theirs, ours, shape):
    with pytest.raises(Exception) as ref:
        theirs(3, 4)(torch.randn(shape))
    with pytest.raises(lstmlab.InputError, match=r"input has 0 time steps .*expected at least 1") as mine:
        ours(3, 4, backend="reference")(torch.randn(shape))
    assert isinstance(mine.value, type(ref.value)) and type(ref.value) is RuntimeError


# ---- boolean cell options --------------------------------------------------------------------
@pytest.mark.parametrize(
    "option,value,allowed",
    [
        ("peepholes", "false", "False or True"),
        ("peepholes", 1, "False or True"),
        ("input_gate", "no", "False or True"),
        ("gate_recurrence", None, "False or True"),
        ("forget_gate", True, "'free' or 'coupled' or 'none'"),
        ("activation", 0, "'tanh' or"),
    ],
)
def test_cell_options_are_typed(option, value, allowed):
    with pytest.raises(lstmlab.ArgumentError, match=rf"{option}={value!r} is not allowed; allowed: {allowed}"):
        lstmlab.Recurrent(4, 8, **{option: value})
    with pytest.raises(lstmlab.ArgumentError, match=rf"{option}={value!r}"):
        lstmlab.LSTMCell(4, 8, **{option: value})


def test_boolean_cell_options_take_booleans():
    assert lstmlab.Recurrent(4, 8, peepholes=True).spec.peepholes is True
    assert lstmlab.Recurrent(4, 8, cell="vanilla", peepholes=False).spec.peepholes is False


def test_input_dtype_is_checked_outside_autocast_only_as_torch():
    ref, ours = torch.nn.LSTM(3, 4), lstmlab.LSTM(3, 4, backend="reference")
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    for m in (ref, ours):
        with pytest.raises(ValueError, match="dtype"):
            m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = m(x)
        assert out.shape == (5, 2, 4) and torch.isfinite(out).all()
