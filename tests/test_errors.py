"""Bad input raises ValueError / TypeError whose message names the argument, what was
given and what is allowed."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmlab
from lstmlab import CellSpec


@pytest.mark.parametrize("kwargs,pattern", [
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
])
def test_constructor_errors(kwargs, pattern):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        lstmlab.Recurrent(**args)


def test_spec_validation():
    with pytest.raises(ValueError, match=r"kind='cnn'.*\('rnn', 'lstm', 'gru'\)"):
        CellSpec("x", "cnn", "bad")
    with pytest.raises(ValueError, match=r"coupled.*no input gate"):
        CellSpec("x", "lstm", "bad", input_gate=False, forget_gate="coupled")
    with pytest.raises(ValueError, match=r"'gru'.*no option 'peepholes'"):
        lstmlab.get_cell("gru").with_options(peepholes=True)


@pytest.fixture
def lstm():
    return lstmlab.Recurrent(3, 4, num_layers=2)


@pytest.mark.parametrize("make_input,exc,pattern", [
    (lambda: torch.randn(5, 2, 6), ValueError, r"input has 6 features .*expected input_size=3"),
    (lambda: torch.randn(5, 2, 3, 1), ValueError, r"4 dimensions .*expected 3 \(batched\) or 2"),
    (lambda: torch.randn(5, 2, 3, dtype=torch.float64), ValueError, r"dtype torch.float64 .*torch.float32"),
    (lambda: [[1.0, 2.0, 3.0]], TypeError, r"input must be a Tensor or PackedSequence, got list"),
    (lambda: torch.randn(0, 2, 3), ValueError, r"0 time steps"),
    (lambda: pack_padded_sequence(torch.randn(5, 2, 7), torch.tensor([5, 3])), ValueError, r"7 features"),
])
def test_forward_input_errors(lstm, make_input, exc, pattern):
    with pytest.raises(exc, match=pattern):
        lstm(make_input())


@pytest.mark.parametrize("make_hx,pattern", [
    (lambda: torch.zeros(2, 2, 4), r"hx must be a tuple \(h_0, c_0\) for cell 'lstm', got Tensor"),
    (lambda: (torch.zeros(2, 2, 4),), r"got tuple of length 1"),
    (lambda: (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)), r"hx h_0 has shape \(1, 2, 4\); expected \(2, 2, 4\)"),
    (lambda: (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)), r"hx c_0 has shape \(2, 3, 4\); expected \(2, 2, 4\)"),
    (lambda: (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4, dtype=torch.float64)), r"hx c_0 is torch.float64"),
    (lambda: (torch.zeros(2, 4), torch.zeros(2, 4)), r"hx h_0 has shape \(2, 4\); expected \(2, 2, 4\)"),
])
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
