"""backend="scan" (lstmlab.backends.scan, the parallel-in-time route) as a registered backend:
whole layers of minlstm and mingru (two layers, bidirectional, packed variable-length input,
given initial state) against backend="reference", forward and backward; the refusal for every
other cell; and what backend="auto" chooses with it."""

import warnings

import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab import backends
from lstmlab.backends import scan
from lstmlab.errors import ArgumentError

MIN_CELLS = [c for c in lstmlab.cell_names() if scan.supports(lstmlab.get_cell(c))[0]]
OTHER_CELLS = [c for c in lstmlab.cell_names() if c not in MIN_CELLS]
f64 = torch.float64


def test_the_scan_serves_exactly_the_cells_linear_in_h():
    assert MIN_CELLS == ["minlstm", "mingru"]
    assert "scan" in backends.backend_names()
    assert backends.availability()["scan"] == (True, "plain PyTorch, any device (minlstm and mingru only)")


def _pair(cell, dtype, **kw):
    torch.manual_seed(0)
    ref = lstmlab.Recurrent(4, 6, cell=cell, num_layers=2, bidirectional=True, backend="reference", dtype=dtype, **kw)
    par = lstmlab.Recurrent(4, 6, cell=cell, num_layers=2, bidirectional=True, backend="scan", dtype=dtype, **kw)
    par.load_state_dict(ref.state_dict())
    return ref, par


def _run(m, x, lengths, h0):
    """Padded output, h_n and the gradients of a fixed random function of both."""
    m.zero_grad()
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = m(packed, h0)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
    g = torch.Generator().manual_seed(7)
    w_out = torch.randn(out.shape, generator=g, dtype=f64).to(out.dtype)
    w_h = torch.randn(h_n.shape, generator=g, dtype=f64).to(out.dtype)
    ((out * w_out).sum() + (h_n * w_h).sum()).backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    return out, h_n, x.grad, h0.grad, grads


@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize("activation", ["g_min", "identity"])
@pytest.mark.parametrize("cell", MIN_CELLS)
def test_layer_matches_reference_forward_and_backward(cell, activation, dtype):
    ref, par = _pair(cell, dtype, activation=activation)
    g = torch.Generator().manual_seed(1)
    T = 45  # > 32 steps: the scan's chunked route, not its short-sequence loop
    x = torch.randn(T, 3, 4, generator=g, dtype=f64).to(dtype)
    h0 = torch.randn(4, 3, 6, generator=g, dtype=f64).to(dtype)  # (layers * directions, B, H)
    lengths = torch.tensor([45, 2, 37])
    got, want = _run(par, x, lengths, h0), _run(ref, x, lengths, h0)
    tol = "float32_gradient" if dtype == torch.float32 else None
    for what, a, b in zip(("output", "h_n", "d x", "d h0"), got[:4], want[:4]):
        assert_close(a, b, tol=tol, msg=f"{cell} {activation} {dtype}: {what}")
    assert set(got[4]) == set(want[4]) and len(want[4]) == 8  # weight_ih, bias_ih per layer and direction
    for n in want[4]:
        assert_close(got[4][n], want[4][n], tol=tol, msg=f"{cell} {activation} {dtype}: d {n}")


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_batch_first_unpacked_without_state(cell):
    ref, par = _pair(cell, f64)
    ref.batch_first = par.batch_first = True
    x = torch.randn(2, 70, 4, generator=torch.Generator().manual_seed(2), dtype=f64)
    (out, h), (want_out, want_h) = par(x), ref(x)
    assert_close(out, want_out)
    assert_close(h, want_h)


@pytest.mark.parametrize("cell", OTHER_CELLS)
def test_other_cells_are_refused_naming_cell_backend_and_reason(cell):
    kind = lstmlab.get_cell(cell).kind
    message = (
        f"backend='scan' cannot run cell '{cell}': kind '{kind}' is not one the parallel scan computes "
        "(minlstm, mingru: their recurrence is linear in h); allowed for this cell: backend='reference'"
    )
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lstmlab.Recurrent(3, 4, cell=cell, backend="scan")
    with pytest.raises(ArgumentError, match=f"backend='scan' cannot run cell '{cell}'"):
        backends.get_backend("scan", "cpu", lstmlab.get_cell(cell))


def test_auto_on_cpu_never_picks_the_scan_and_does_not_warn_about_it(monkeypatch):
    """On CPU "auto" keeps the fused kernel (or the reference) for the min cells (the scan is
    slower there: BENCHMARKS.md); the scan passed over for other cells is not worth a warning."""
    monkeypatch.setattr(backends, "_WARNED", set())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for cell in lstmlab.cell_names():
            chosen = backends.get_backend("auto", "cpu", lstmlab.get_cell(cell))
            assert chosen is not scan, cell
    assert not [r for r in w if "'scan'" in str(r.message)]


def test_auto_on_other_devices_picks_the_scan_for_min_cells_only():
    for cell in lstmlab.cell_names():
        want = "scan" if cell in MIN_CELLS else "reference"
        assert backends._resolve("auto", "cuda", lstmlab.get_cell(cell)) == want, cell
    assert backends._resolve("auto", "cuda", None) == "reference"  # any cell: a backend that runs all


def test_scan_runs_on_the_meta_device_shapes_only():
    """Plain PyTorch: it runs wherever the tensors are (here "meta", which checks the shapes)."""
    m = lstmlab.Recurrent(3, 5, cell="mingru", bidirectional=True, backend="scan", device="meta")
    out, h = m(torch.empty(40, 2, 3, device="meta"))
    assert out.shape == (40, 2, 10) and h.shape == (2, 2, 5) and out.device.type == "meta"
