"""Recurrent under torch.autocast("cpu", dtype=torch.bfloat16) on every backend, against
torch.nn.LSTM / GRU / RNN under autocast with the same weights: the same output and state
dtypes (torch's: LSTM and RNN in bfloat16, GRU in float32), values and float32 parameter
gradients within bfloat16's tolerance; every registered cell runs, its dtypes by kind and
the backends agreeing; float64 is left alone, as autocast leaves it."""

import functools
import importlib

import pytest
import torch

import lstmlab
from conftest import TOL, assert_close
from lstmlab.backends import backend_names

BACKENDS = backend_names()


def runs(backend, cell) -> bool:
    """Whether backend computes the cell (the scan: minlstm and mingru only; the cpu kernel
    every kind it has code for)."""
    return importlib.import_module(f"lstmlab.backends.{backend}").supports(lstmlab.get_cell(cell))[0]


BF16 = torch.bfloat16
TWINS = {
    "lstm": (torch.nn.LSTM, {}),
    "gru": (torch.nn.GRU, {}),
    "rnn-tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
}


@functools.cache
def torch_lstm_fails_under_autocast() -> str | None:
    """Why torch.nn.LSTM itself cannot run under bfloat16 autocast here, or None: it runs
    oneDNN's bfloat16 LSTM, which some CPUs lack (an AVX2 Zen 1: "could not create a
    primitive descriptor"). The comparisons with it are skipped there, not failed: the
    reference does not exist on that machine."""
    try:
        with torch.autocast("cpu", dtype=BF16):
            torch.nn.LSTM(3, 4)(torch.randn(2, 1, 3))
    except RuntimeError as e:
        return f"torch.nn.LSTM fails under bfloat16 autocast on this CPU: {e}"
    return None


def skip_without_torch_lstm():
    why = torch_lstm_fails_under_autocast()
    if why:
        pytest.skip(why)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def run(m, x, hx=None):
    """Output, state and the parameters' gradients of a fixed scalar, under autocast."""
    m.zero_grad()
    with torch.autocast("cpu", dtype=BF16):
        out, state = m(x, hx)
    g = torch.Generator().manual_seed(3)
    loss = (out.float() * torch.randn(out.shape, generator=g)).sum() + sum(s.float().sum() for s in as_tuple(state))
    loss.backward()
    return out, as_tuple(state), {n: p.grad for n, p in m.named_parameters()}


@pytest.mark.parametrize("cell,backend", [(c, b) for c in TWINS for b in BACKENDS if runs(b, c)])
def test_matches_torch_under_autocast(cell, backend):
    if cell == "lstm":
        skip_without_torch_lstm()
    cls, kw = TWINS[cell]
    torch.manual_seed(0)
    ours = lstmlab.Recurrent(5, 8, cell=cell, num_layers=2, bidirectional=True, backend=backend)
    twin = cls(5, 8, num_layers=2, bidirectional=True, **kw)
    twin.load_state_dict(ours.state_dict())
    x = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(1))
    got, want = run(ours, x), run(twin, x)
    assert got[0].dtype == want[0].dtype, "output dtype"
    assert [s.dtype for s in got[1]] == [s.dtype for s in want[1]], "state dtypes"
    assert_close(got[0].float(), want[0].float(), BF16, msg=f"{cell} {backend}: output")
    for a, b in zip(got[1], want[1], strict=True):
        assert_close(a.float(), b.float(), BF16, msg=f"{cell} {backend}: final state")
    # torch's backward runs its products in bfloat16 too: its gradients are compared as a
    # whole (relative error of the norm), not entry by entry
    rtol = TOL[BF16][0]
    for n in want[2]:
        assert got[2][n].dtype == torch.float32
        err = (got[2][n] - want[2][n].float()).norm() / want[2][n].float().norm()
        assert err < rtol, f"{cell} {backend}: d {n} off by {err:.3g} (relative, in norm)"


def test_torch_dtypes_are_what_lstmlab_documents():
    """The rule backends/__init__.py describes, read off torch itself."""
    skip_without_torch_lstm()
    x = torch.randn(4, 2, 3)
    with torch.autocast("cpu", dtype=BF16):
        lstm = torch.nn.LSTM(3, 4)(x)
        gru = torch.nn.GRU(3, 4)(x)
        rnn = torch.nn.RNN(3, 4)(x)
    assert [lstm[0].dtype, *[s.dtype for s in lstm[1]]] == [BF16] * 3
    assert [gru[0].dtype, gru[1].dtype] == [torch.float32] * 2
    assert [rnn[0].dtype, rnn[1].dtype] == [BF16] * 2


@pytest.mark.parametrize("cell", lstmlab.cell_names())
def test_every_cell_runs_under_autocast_alike_on_every_backend(cell):
    spec = lstmlab.get_cell(cell)
    want_dtype = torch.float32 if spec.kind == "gru" else BF16
    x = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([6, 2, 4])
    results = {}
    # the backends that compute this cell (the cpu kernel has no slstm, minlstm, mingru yet: issue #13)
    runs_it = [b for b in BACKENDS if runs(b, cell)]
    for backend in runs_it:
        torch.manual_seed(0)
        m = lstmlab.Recurrent(
            4, 5, cell=cell, bidirectional=True, backend=backend, return_cell_states=spec.kind == "lstm"
        )
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        with torch.autocast("cpu", dtype=BF16):
            res = m(packed)
        out, unpacked_lengths = torch.nn.utils.rnn.pad_packed_sequence(res[0])
        assert out.dtype == want_dtype and all(s.dtype == want_dtype for s in as_tuple(res[1]))
        results[backend] = [out, *as_tuple(res[1]), *res[2:]]
        if spec.kind == "lstm":
            assert res[2].data.dtype == BF16  # the cell states, packed
            results[backend][-1] = res[2].data
    for backend in runs_it[1:]:
        for a, b in zip(results[backend], results[runs_it[0]], strict=True):
            assert_close(a.float(), b.float(), BF16, msg=f"{cell}: {backend} vs {runs_it[0]}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if runs(b, "lstm")])
def test_float64_is_not_cast(backend):
    torch.manual_seed(0)
    m = lstmlab.Recurrent(3, 4, dtype=torch.float64, backend=backend)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=BF16):
        got = m(x)
    want = m(x)
    assert got[0].dtype == torch.float64
    assert torch.equal(got[0], want[0])


@pytest.mark.parametrize("hx", [False, True])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pair", ["LSTMCell", "GRUCell", "RNNCell"])
def test_single_step_cells_follow_torch_under_autocast(pair, x_dtype, hx):
    """torch's cells under autocast: RNNCell's state in bfloat16; LSTMCell's and GRUCell's in
    bfloat16 promoted with the previous state's dtype (the input's without hx)."""
    torch.manual_seed(0)
    theirs, ours = getattr(torch.nn, pair)(3, 4), getattr(lstmlab, pair)(3, 4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3).to(x_dtype)
    state = None
    if hx:
        state = (torch.randn(2, 4), torch.randn(2, 4)) if pair == "LSTMCell" else torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = theirs(x, state), ours(x, state)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want, strict=True):
        assert_close(a.float(), b.float(), tol=torch.bfloat16)
