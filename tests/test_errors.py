"""Bad input raises lstmlab's exceptions (lstmlab.errors), whose messages name the argument,
what was given and what is allowed, and whose types derive from what torch raises in the
same case, so `except` clauses written for torch.nn.LSTM catch them."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmlab
from lstmlab import CellSpec


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(cell="lsmt"), r"cell='lsmt'.*valid cells: rnn-tanh, .*lstm1997, lstm, vanilla.*gru"),
        (dict(cell="gru", peepholes=True), r"'gru' has no option 'peepholes'"),
        (dict(cell="rnn-tanh", forget_gate="none"), r"'rnn-tanh' has no option 'forget_gate'.*\['activation'\]"),
        (dict(cell="gru", truncate=True), r"'gru' has no option 'truncate'"),
        (dict(cell="rnn-relu", forget_bias=1.0), r"'rnn-relu' has no option 'forget_bias'"),
        (dict(cell="nfg", forget_bias=1.0), r"'nfg' has no option 'forget_bias'.*'none'"),
        (dict(cell="lstm", forget_bias=1.0, bias=False), r"forget_bias=1.0 needs bias=True"),
        (dict(cell="lstm", forget_bias="high"), r"forget_bias='high' is invalid; allowed: a finite number"),
        (dict(cell="nig", input_bias=-3.0), r"'nig' has no option 'input_bias' \(given -3.0\): it has no input gate"),
        (dict(cell="gru", input_bias=-3.0), r"'gru' has no option 'input_bias'"),
        (dict(cell="lstm", input_bias=float("nan")), r"input_bias=nan is invalid"),
        (dict(cell="gru", return_cell_states=True), r"'gru' has no option 'return_cell_states'"),
        (dict(hidden_size=0), r"hidden_size=0 .*int >= 1"),
        (dict(input_size=2.5), r"input_size=2.5 .*int >= 1"),
        (dict(num_layers=0), r"num_layers=0"),
        (dict(dropout=1.5), r"dropout=1.5 .*\[0, 1\]"),
        (dict(bidirectional="yes"), r"bidirectional='yes' .*True or False"),
        (dict(init="xavier"), r"init='xavier' .*'torch', '1997'"),
        (dict(backend="cuda-fast"), r"backend='cuda-fast' .*'auto', 'reference'"),
        (dict(cell="lstm", activation="softsign"), r"activation='softsign' is not allowed.*'tanh'"),
        (dict(cell="lstm", forget_gate="sometimes"), r"forget_gate='sometimes'.*free"),
        (dict(cell="lstm", truncate="yes"), r"truncate='yes' .*True or False"),
    ],
)
def test_constructor_errors(kwargs, pattern):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(lstmlab.ArgumentError, match=pattern):
        lstmlab.Recurrent(**args)


def test_spec_validation():
    with pytest.raises(ValueError, match=r"kind='cnn'.*\('rnn', 'lstm', 'gru', 'slstm', 'minlstm', 'mingru'\)"):
        CellSpec("x", "cnn", "bad")
    with pytest.raises(ValueError, match=r"coupled.*no input gate"):
        CellSpec("x", "lstm", "bad", input_gate=False, forget_gate="coupled")
    with pytest.raises(ValueError, match=r"'gru'.*no option 'peepholes'"):
        lstmlab.get_cell("gru").with_options(peepholes=True)


@pytest.fixture
def lstm():
    return lstmlab.Recurrent(3, 4, num_layers=2)


@pytest.mark.parametrize(
    "make_input,exc,pattern",
    [
        (lambda: torch.randn(5, 2, 6), ValueError, r"input has 6 features .*expected input_size=3"),
        (lambda: torch.randn(5, 2, 3, 1), ValueError, r"4 dimensions .*expected 3 \(batched\) or 2"),
        (lambda: torch.randn(5, 2, 3, dtype=torch.float64), ValueError, r"dtype torch.float64 .*torch.float32"),
        (lambda: [[1.0, 2.0, 3.0]], TypeError, r"input must be a Tensor or PackedSequence, got list"),
        (lambda: torch.randn(0, 2, 3), RuntimeError, r"0 time steps"),
        (lambda: pack_padded_sequence(torch.randn(5, 2, 7), torch.tensor([5, 3])), ValueError, r"7 features"),
    ],
)
def test_forward_input_errors(lstm, make_input, exc, pattern):
    with pytest.raises(exc, match=pattern):
        lstm(make_input())


@pytest.mark.parametrize(
    "make_hx,pattern",
    [
        (lambda: torch.zeros(2, 2, 4), r"hx must be a tuple \(h_0, c_0\) for cell 'lstm', got Tensor"),
        (lambda: (torch.zeros(2, 2, 4),), r"got tuple of length 1"),
        (lambda: (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)), r"hx h_0 has shape \(1, 2, 4\); expected \(2, 2, 4\)"),
        (lambda: (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)), r"hx c_0 has shape \(2, 3, 4\); expected \(2, 2, 4\)"),
        (lambda: (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4, dtype=torch.float64)), r"hx c_0 is torch.float64"),
        (lambda: (torch.zeros(2, 4), torch.zeros(2, 4)), r"hx h_0 has shape \(2, 4\); expected \(2, 2, 4\)"),
    ],
)
def test_hx_errors(lstm, make_hx, pattern):
    with pytest.raises(ValueError, match=pattern):
        lstm(torch.randn(5, 2, 3), make_hx())


def test_hx_errors_single_state_and_unbatched():
    gru = lstmlab.Recurrent(3, 4, cell="gru")
    with pytest.raises(ValueError, match=r"hx must be a Tensor \(h_0\) for cell 'gru', got tuple"):
        gru(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match=r"hx h_0 has shape \(1, 2, 4\); expected \(1, 4\)"):
        gru(torch.randn(5, 3), torch.zeros(1, 2, 4))
    fgr = lstmlab.Recurrent(3, 4, cell="fgr")
    with pytest.raises(ValueError, match=r"hx must be a tuple \(h_0, c_0, a_0\)"):
        fgr(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match=r"hx a_0 has shape \(1, 2, 4\); expected \(1, 2, 12\)"):
        fgr(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))


def test_unavailable_backend_raises_with_reason(monkeypatch):
    from lstmlab import backends

    monkeypatch.setitem(backends._MODULES, "broken", "lstmlab.no_such_module")
    with pytest.raises(RuntimeError, match=r"backend='broken' is unavailable: import failed: ModuleNotFoundError"):
        backends.get_backend("broken")


def test_device_mismatch():
    m = lstmlab.Recurrent(3, 4, device="meta")
    with pytest.raises(ValueError, match=r"input is on cpu but the parameters are on meta"):
        m(torch.randn(5, 2, 3))


# ---- exception types: whatever torch raises in the same case catches ours ----------------
def _lstm_pair():
    return torch.nn.LSTM(3, 4, 2), lstmlab.LSTM(3, 4, 2, backend="reference")


def _gru_pair():
    return torch.nn.GRU(3, 4), lstmlab.GRU(3, 4, backend="reference")


def _cell_pair(name):
    return getattr(torch.nn, name)(3, 4), getattr(lstmlab, name)(3, 4)


FORWARD_CASES = {
    "4-D input": (_lstm_pair, lambda: (torch.randn(5, 2, 3, 1),)),
    "1-D input": (_lstm_pair, lambda: (torch.randn(3),)),
    "wrong feature count": (_lstm_pair, lambda: (torch.randn(5, 2, 6),)),
    "wrong feature count, unbatched": (_gru_pair, lambda: (torch.randn(5, 6),)),
    "float64 input": (_lstm_pair, lambda: (torch.randn(5, 2, 3, dtype=torch.float64),)),
    "int input": (_gru_pair, lambda: (torch.ones(5, 2, 3, dtype=torch.int64),)),
    "list input": (_lstm_pair, lambda: ([[1.0, 2.0, 3.0]],)),
    "0 time steps": (_lstm_pair, lambda: (torch.randn(0, 2, 3),)),
    "h_0 of the wrong layer count": (
        _lstm_pair,
        lambda: (torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4))),
    ),
    "c_0 of the wrong batch": (
        _lstm_pair,
        lambda: (torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4))),
    ),
    "h_0 of the wrong width": (
        _lstm_pair,
        lambda: (torch.randn(5, 2, 3), (torch.zeros(2, 2, 5), torch.zeros(2, 2, 4))),
    ),
    "2-D hx for batched input": (_lstm_pair, lambda: (torch.randn(5, 2, 3), (torch.zeros(2, 4), torch.zeros(2, 4)))),
    "3-D hx for unbatched input": (
        _lstm_pair,
        lambda: (torch.randn(5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))),
    ),
    "a tensor for LSTM's hx": (_lstm_pair, lambda: (torch.randn(5, 2, 3), torch.zeros(2, 2, 4))),
    "a tuple for GRU's hx": (_gru_pair, lambda: (torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))),
    "GRU hx of the wrong batch": (_gru_pair, lambda: (torch.randn(5, 2, 3), torch.zeros(1, 3, 4))),
    "float64 hx": (_gru_pair, lambda: (torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.float64))),
    "LSTMCell 3-D input": (lambda: _cell_pair("LSTMCell"), lambda: (torch.randn(2, 2, 3),)),
    "LSTMCell wrong feature count": (lambda: _cell_pair("LSTMCell"), lambda: (torch.randn(2, 5),)),
    "LSTMCell c_0 of the wrong batch": (
        lambda: _cell_pair("LSTMCell"),
        lambda: (torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(3, 4))),
    ),
    "GRUCell hx of the wrong width": (lambda: _cell_pair("GRUCell"), lambda: (torch.randn(2, 3), torch.zeros(2, 5))),
    "RNNCell float64 input": (lambda: _cell_pair("RNNCell"), lambda: (torch.randn(2, 3, dtype=torch.float64),)),
    "RNNCell 3-D hx": (lambda: _cell_pair("RNNCell"), lambda: (torch.randn(2, 3), torch.zeros(1, 2, 4))),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_errors_are_caught_as_torchs(case):
    make_pair, make_args = FORWARD_CASES[case]
    theirs, ours = make_pair()
    with pytest.raises(Exception) as ref:
        theirs(*make_args())
    with pytest.raises(lstmlab.InputError) as mine:
        ours(*make_args())
    assert isinstance(mine.value, type(ref.value)), (type(ref.value), mine.value)


CONSTRUCTOR_CASES = [
    ("LSTM", dict(input_size=3.0, hidden_size=4)),
    ("LSTM", dict(input_size=0, hidden_size=4)),
    ("LSTM", dict(input_size=3, hidden_size=-1)),
    ("LSTM", dict(input_size=3, hidden_size=4, num_layers=0)),
    ("LSTM", dict(input_size=3, hidden_size=4, num_layers=1.5)),
    ("LSTM", dict(input_size=3, hidden_size=4, num_layers="2")),
    ("LSTM", dict(input_size=3, hidden_size=4, bias=1)),
    ("LSTM", dict(input_size=3, hidden_size=4, batch_first="yes")),
    ("LSTM", dict(input_size=3, hidden_size=4, dropout=1.5)),
    ("LSTM", dict(input_size=3, hidden_size=4, dropout="0.5")),
    ("LSTM", dict(input_size=3, hidden_size=4, proj_size=-1)),
    ("LSTM", dict(input_size=3, hidden_size=4, proj_size=4)),
    ("LSTM", dict(input_size=3, hidden_size=4, proj_size=2.5)),
    ("GRU", dict(input_size=3, hidden_size=4, proj_size=2)),
    ("RNN", dict(input_size=3, hidden_size=4, proj_size=2)),
    ("RNN", dict(input_size=3, hidden_size=4, nonlinearity="sigmoid")),
    ("LSTMCell", dict(input_size=3, hidden_size=4.0)),
    ("GRUCell", dict(input_size="3", hidden_size=4)),
]


@pytest.mark.parametrize("name,kwargs", CONSTRUCTOR_CASES, ids=[f"{n}-{k}" for n, k in CONSTRUCTOR_CASES])
def test_constructor_errors_are_caught_as_torchs(name, kwargs):
    with pytest.raises(Exception) as ref:
        getattr(torch.nn, name)(**kwargs)
    with pytest.raises(lstmlab.ArgumentError) as mine:
        getattr(lstmlab, name)(**kwargs)
    assert isinstance(mine.value, type(ref.value)), (type(ref.value), mine.value)
