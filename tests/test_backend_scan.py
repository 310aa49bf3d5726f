"""backend="scan" (lstmlab.backends.scan, the parallel-in-time route) as a registered backend:
whole layers of minlstm and mingru (two layers, bidirectional, packed variable-length input,
given initial state) against backend="reference", forward and backward; the refusal for every
other cell; and what backend="auto" chooses with it."""

import warnings

import pytest
import torch

import lstmlab
from conftest import assert_close, saturated_gates
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


# ---- under torch's graph tools: right numbers and gradients, or a clear error ----------------


def _graph_grads(model, x):
    """out, h_n and the gradients of a fixed function of both, by x and by every parameter."""
    return _graph_grads_from(model, x, None)


def _graph_grads_from(model, x, h0):
    """_graph_grads with an initial state h0 (None: zeros), whose gradient comes after x's."""
    x = x.detach().clone().requires_grad_()
    leaves = [x] + ([] if h0 is None else [h0.detach().clone().requires_grad_()])
    out, h_n = model(*leaves)
    g = torch.Generator().manual_seed(3)
    cot_out = torch.randn(out.shape, generator=g, dtype=f64).to(out.dtype)
    cot_h = torch.randn(h_n.shape, generator=g, dtype=f64).to(out.dtype)
    loss = (out * cot_out).sum() + (h_n * cot_h).sum()
    grads = torch.autograd.grad(loss, [*leaves, *model.parameters()])
    return [out.detach(), h_n.detach(), *grads]


def _same(got, want, what):
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a, b, tol="float32_gradient", msg=f"{what}: item {k} (out, h_n, d x, d params)")


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_export_runs_forward_and_backward(cell):
    """torch.export records the scan's operations in place of its autograd Functions; the
    exported module, run with gradients on, is differentiated operation by operation."""
    ref, par = _pair(cell, torch.float32)
    for T in (6, 40):  # the steps one by one, and the chunked route
        x = torch.randn(T, 2, 4, generator=torch.Generator().manual_seed(T))
        exported = torch.export.export(par, (x,)).module()
        _same(_graph_grads(exported, x), _graph_grads(ref, x), f"{cell} exported, T={T}")


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_compile_fullgraph_at_several_lengths(cell):
    """A second length makes torch.compile trace T symbolically. (One layer: compiling the
    unrolled chunks takes seconds a layer.)"""
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = lstmlab.Recurrent(4, 6, cell=cell, backend="reference")
    par = lstmlab.Recurrent(4, 6, cell=cell, backend="scan")
    par.load_state_dict(ref.state_dict())
    compiled = torch.compile(par, fullgraph=True, backend="aot_eager")
    for T in (40, 57):
        x = torch.randn(T, 2, 4, generator=torch.Generator().manual_seed(T))
        _same(_graph_grads(compiled, x), _graph_grads(ref, x), f"{cell} compiled, T={T}")


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_jit_trace_at_other_lengths_and_batches(cell):
    ref, par = _pair(cell, torch.float32)
    traced = torch.jit.trace(par, (torch.randn(40, 2, 4),), check_trace=False)
    for T, B in ((40, 2), (33, 3), (7, 1)):
        x = torch.randn(T, B, 4, generator=torch.Generator().manual_seed(T))
        _same(_graph_grads(traced, x), _graph_grads(ref, x), f"{cell} traced at (40, 2), run at ({T}, {B})")


@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize("activation", ["g_min", "identity"])
@pytest.mark.parametrize("cell", MIN_CELLS)
def test_saturated_gates_finite_exactly_where_the_reference_is(cell, activation, dtype):
    """Extreme gates and candidates: finite exactly where the reference is finite, and equal
    there per step (out, h_n, d x, d h0; the weights' gradients sum terms of 1e30 over steps
    and rows, whose cancellation leaves 1e15 of rounding, so only their finiteness is
    compared here; test_layer_matches_reference_forward_and_backward compares them at
    ordinary values). Where both are not finite the kind may differ (NaN or an infinity): the scan
    multiplies decays compounded over a chunk, which underflow to 0 where the sequential
    loop's tiny factor keeps an infinite state infinite (0 * inf = NaN), and it forms
    i' h~ as exp(log i' + log h~), where the loop's 0 * inf is NaN (the module docstring).
    Candidates up to 1e30, not the dtype's largest: that product in log space keeps the digits
    a denormal i' (1e-39, 1e-309) has lost in the loop, a difference of order 1 times 1e38."""
    ref, x, h0 = saturated_gates(cell, activation, dtype, T=45, huge=1e30)  # chunked: 7 chunks of 7
    par = lstmlab.Recurrent(1, ref.hidden_size, cell=cell, activation=activation, dtype=dtype, backend="scan")
    par.load_state_dict(ref.state_dict())
    got, want = _graph_grads_from(par, x, h0), _graph_grads_from(ref, x, h0)
    tol = "float32_cancelling" if dtype == torch.float32 else None
    for name, a, b in zip(("out", "h_n", "d x", "d h0", "d weight_ih", "d bias_ih"), got, want, strict=True):
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite), (
            f"{cell} {activation} {dtype} {name}: finite at {(torch.isfinite(a) & ~finite).nonzero().tolist()[:5]}, "
            f"not at {(~torch.isfinite(a) & finite).nonzero().tolist()[:5]}, unlike the reference"
        )
        if not name.startswith("d weight") and not name.startswith("d bias"):
            assert_close(a[finite], b[finite], dtype=dtype, tol=tol, msg=f"{cell} {activation} {name}")


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_func_grad_vmap_and_vmap_of_grad(cell):
    """torch.func's transforms through the scan's autograd Functions (forward and
    setup_context apart, vmap rules generated): the reference backend's numbers."""
    ref, par = _pair(cell, torch.float32)
    xs = torch.randn(3, 40, 2, 4, generator=torch.Generator().manual_seed(8))
    loss = lambda m: lambda x: m(x)[0].square().sum()
    assert_close(torch.func.grad(loss(par))(xs[0]), torch.func.grad(loss(ref))(xs[0]), tol="float32_gradient")
    with torch.no_grad():
        assert_close(torch.func.vmap(lambda x: par(x)[0])(xs), torch.stack([ref(x)[0] for x in xs]))
    want = torch.stack([torch.func.grad(loss(ref))(x) for x in xs])
    assert_close(torch.func.vmap(torch.func.grad(loss(par)))(xs), want, tol="float32_gradient")
