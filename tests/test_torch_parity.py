"""lstm / gru / rnn-tanh / rnn-relu against torch.nn.LSTM / GRU / RNN: outputs, final
states and every parameter gradient, with state_dicts moved both ways (strict)."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmlab
from conftest import assert_close

TORCH = {
    "lstm": lambda *a, **k: torch.nn.LSTM(*a, **k),
    "gru": lambda *a, **k: torch.nn.GRU(*a, **k),
    "rnn-tanh": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "rnn-relu": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
}
I, H, B, T = 5, 7, 4, 9


def pair(cell, seed=0, **kw):
    torch.manual_seed(seed)
    ref = TORCH[cell](I, H, **kw)
    ours = lstmlab.Recurrent(I, H, cell=cell, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def flat_state(s):
    return list(s) if isinstance(s, tuple) else [s]


def compare(ref, ours, x, hx=None):
    """Forward both, backprop the same random cotangents, compare everything."""
    out_r, st_r = ref(x, hx)
    out_o, st_o = ours(x, hx)
    data = lambda o: o.data if hasattr(o, "batch_sizes") else o
    assert_close(data(out_o), data(out_r), msg="output")
    for a, b in zip(flat_state(st_o), flat_state(st_r), strict=True):
        assert_close(a, b, msg="final state")
    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(t.shape, generator=g) for t in [data(out_r), *flat_state(st_r)]]
    for model, outs in ((ref, [data(out_r), *flat_state(st_r)]), (ours, [data(out_o), *flat_state(st_o)])):
        model.zero_grad()
        torch.autograd.backward(outs, cot)
    names = [n for n, _ in ref.named_parameters()]
    assert names == [n for n, _ in ours.named_parameters()]
    for (n, pr), po in zip(ref.named_parameters(), ours.parameters()):
        assert_close(po.grad, pr.grad, msg=f"grad of {n}")


@pytest.mark.parametrize("cell", list(TORCH))
@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,given_hx",
    list(itertools.product([1, 2], [False, True], [False, True], [False, True])),
)
def test_dense_matches_torch(cell, num_layers, bidirectional, batch_first, given_hx):
    ref, ours = pair(cell, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, requires_grad=True)
    hx = None
    if given_hx:
        shape = (num_layers * (2 if bidirectional else 1), B, H)
        hx = torch.randn(shape, generator=g)
        hx = (hx, torch.randn(shape, generator=g)) if cell == "lstm" else hx
    compare(ref, ours, x, hx)


@pytest.mark.parametrize("cell", list(TORCH))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_variable_lengths_match_torch(cell, bidirectional, batch_first):
    ref, ours = pair(cell, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([5, 9, 1, 5])  # unsorted, with a tie and a length-1 sequence
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    compare(ref, ours, packed)
    # and the padded view torch users unpack to is identical, zeros past each length
    out_o, _ = ours(packed)
    out_r, _ = ref(packed)
    po, lo = pad_packed_sequence(out_o, batch_first=batch_first)
    pr, lr = pad_packed_sequence(out_r, batch_first=batch_first)
    assert torch.equal(lo, lr)
    assert_close(po, pr)


@pytest.mark.parametrize("cell", list(TORCH))
def test_unbatched_input_matches_torch(cell):
    ref, ours = pair(cell, num_layers=2, bidirectional=True)
    x = torch.randn(T, I, generator=torch.Generator().manual_seed(3))
    compare(ref, ours, x)


@pytest.mark.parametrize("cell", list(TORCH))
def test_state_dict_round_trip(cell):
    torch.manual_seed(5)
    ours = lstmlab.Recurrent(I, H, cell=cell, num_layers=2, bidirectional=True)
    ref = TORCH[cell](I, H, num_layers=2, bidirectional=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    back = lstmlab.Recurrent(I, H, cell=cell, num_layers=2, bidirectional=True)
    back.load_state_dict(ref.state_dict(), strict=True)
    for (n1, a), (n2, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b)
    assert ours.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.parametrize("cell", list(TORCH))
def test_default_init_matches_torch_distribution(cell):
    """Default initialisation is torch's: U(-1/sqrt(H), 1/sqrt(H)) on every parameter."""
    Hbig = 64
    m = lstmlab.Recurrent(3, Hbig, cell=cell)
    bound = Hbig**-0.5
    allw = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert allw.abs().max() <= bound
    # uniform on [-b, b]: mean 0, variance b^2 / 3 (n ~ 17k, 5 sigma bands)
    n = allw.numel()
    assert abs(allw.mean().item()) < 5 * bound / (3 * n) ** 0.5
    assert abs(allw.var().item() - bound**2 / 3) < 5 * bound**2 * (4 / (45 * n)) ** 0.5


def test_float32_and_float64_both_supported():
    for dtype in (torch.float32, torch.float64):
        ref = torch.nn.LSTM(I, H, dtype=dtype)
        ours = lstmlab.Recurrent(I, H, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I, dtype=dtype)
        assert_close(ours(x)[0], ref(x)[0])
