"""The cpu backend at the edges of the sizes: an empty batch (B = 0), no steps (T = 0,
run_layer called directly: the layer rejects it as torch does), and one of everything
(B = 1, T = 1, input_size = 1, hidden_size = 1). Every registered cell against the
reference backend, forward and backward, and against torch.nn.LSTM / GRU / RNN where
torch has the cell; the kernel itself refuses sizes it would divide by zero."""

import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab.backends import cpu, reference

# the cells the kernel computes (all registered ones)
CELLS = [c for c in lstmlab.cell_names() if cpu.supports(lstmlab.get_cell(c))[0]]


pytestmark = pytest.mark.usefixtures("cpu_backend")


def torch_twin(spec, I, H, dtype):
    """torch.nn's module for the cell, or None where torch has none."""
    if spec.torch_module is None:
        return None
    kw = {"nonlinearity": spec.activation} if spec.torch_module == "RNN" else {}
    return getattr(torch.nn, spec.torch_module)(I, H, dtype=dtype, **kw)


def run(model, x, hx):
    """Output, final state tensors, and the gradients of a fixed random projection of
    them with respect to x, hx and every parameter (zeros where nothing flows)."""
    out, state = model(x, hx)
    outs = [out, *(state if isinstance(state, tuple) else (state,))]
    g = torch.Generator().manual_seed(3)
    cot = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *model.parameters()]
    # slstm's m_n carries no gradient (detached on both backends): its value is compared
    pairs = [(o, c) for o, c in zip(outs, cot) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], leaves, [c for _, c in pairs], allow_unused=True)
    return [o.detach() for o in outs] + [torch.zeros_like(v) if d is None else d for v, d in zip(leaves, grads)]


def models(cell, I, H, dtype=torch.float64):
    torch.manual_seed(0)
    ref = lstmlab.Recurrent(I, H, cell=cell, dtype=dtype, backend="reference")
    ours = lstmlab.Recurrent(I, H, cell=cell, dtype=dtype, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    twin = torch_twin(ref.spec, I, H, dtype)
    if twin is not None:
        twin.load_state_dict(ref.state_dict())
    return ref, ours, twin


def inputs(spec, T, B, I, H, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=dtype, requires_grad=True)
    # FGR's state includes gate activations, which live in (0, 1)
    hx = tuple(
        (torch.rand if n == "a" else torch.randn)(
            1, B, spec.state_width(n) * H, generator=g, dtype=dtype
        ).requires_grad_()
        for n in spec.state_names
    )
    return x, hx[0] if len(hx) == 1 else hx


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "T,B,I,H", [(5, 0, 4, 8), (1, 1, 1, 1), (4, 1, 1, 1), (1, 3, 2, 1), (3, 1, 1, 6), (1, 1, 3, 5)]
)
def test_edge_sizes_match_reference_and_torch(cell, T, B, I, H):
    ref, ours, twin = models(cell, I, H)
    x, hx = inputs(ref.spec, T, B, I, H)
    want = run(ref, x, hx)
    got = run(ours, x, hx)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, k
        assert_close(a, b, msg=f"{cell} item {k}")
    if twin is not None:
        for k, (a, b) in enumerate(zip(got, run(twin, x, hx))):
            assert a.shape == b.shape, k
            assert_close(a, b, msg=f"{cell} vs torch.nn, item {k}")


@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_gives_empty_results_and_zero_gradients(cell):
    """B = 0: shapes as torch.nn's, and every parameter's gradient exactly zero (not None),
    as torch.nn.LSTM gives; the same with return_cell_states and in a deeper layer."""
    I, H = 3, 4
    torch.manual_seed(0)
    lstm = lstmlab.get_cell(cell).kind == "lstm"
    m = lstmlab.Recurrent(I, H, cell=cell, num_layers=2, bidirectional=True, backend="cpu", return_cell_states=lstm)
    x = torch.randn(6, 0, I, requires_grad=True)
    out, state, *cells = m(x)
    assert out.shape == (6, 0, 2 * H)
    for s, n in zip(state if isinstance(state, tuple) else (state,), m.spec.state_names):
        assert s.shape == (4, 0, m.spec.state_width(n) * H)
    assert [c.shape for c in cells] == ([(6, 0, 2 * H)] if lstm else [])
    (out.sum() + sum(s.sum() for s in (state if isinstance(state, tuple) else (state,)))).backward()
    assert x.grad.shape == x.shape
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), n


@pytest.mark.parametrize("cell", ["lstm", "fgr", "gru", "rnn-tanh"])
@pytest.mark.parametrize("reverse", [False, True])
def test_empty_batch_with_lengths_and_norms(cell, reverse):
    """run_layer with B = 0 and an empty lengths tensor (what packed input of variable
    lengths comes to with no sequences), inside GradNorms: empty results and (T, 0) norms."""
    I, H, T = 2, 5, 4
    m = lstmlab.Recurrent(I, H, cell=cell, backend="reference", dtype=torch.float64)
    x = torch.randn(T, 0, I, dtype=torch.float64, requires_grad=True)
    state = tuple(s.requires_grad_() for s in reference.zero_state(m.spec, 0, H, x))
    lengths = torch.zeros(0, dtype=torch.long)
    with cpu.GradNorms() as norms:
        out, final, cells = cpu.run_layer(
            m.spec, m.cell_params(0), x, state, lengths, reverse=reverse, return_cells=True
        )
    want = reference.run_layer(
        m.spec, m.cell_params(0), x, state, lengths, reverse=reverse, return_cells=m.spec.kind == "lstm"
    )
    assert out.shape == want[0].shape == (T, 0, H)
    assert [f.shape for f in final] == [f.shape for f in want[1]]
    assert (cells is None) == (want[2] is None)
    torch.autograd.backward([out, *final], [torch.ones_like(out), *map(torch.ones_like, final)])
    assert norms.h[0].shape == (T, 0) and (norms.c[0] is None) == (m.spec.kind != "lstm")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-relu"])
def test_no_steps_pass_the_state_through(cell):
    """T = 0 through run_layer itself (the layer, like torch.nn, rejects it): an empty
    output and the initial state as the final one, its gradient passed straight back."""
    m = lstmlab.Recurrent(2, 3, cell=cell, backend="reference", dtype=torch.float64)
    x = torch.randn(0, 2, 2, dtype=torch.float64)
    state = tuple(
        torch.randn(2, m.spec.state_width(n) * 3, dtype=torch.float64, requires_grad=True) for n in m.spec.state_names
    )
    out, final, _ = cpu.run_layer(m.spec, m.cell_params(0), x, state)
    assert out.shape == (0, 2, 3)
    for f, s in zip(final, state, strict=True):
        assert torch.equal(f, s)
    (d,) = torch.autograd.grad(final[0], state[0], torch.full_like(state[0], 2.5))
    assert torch.equal(d, torch.full_like(state[0], 2.5))


def test_kernel_refuses_zero_sizes():
    """The extension's entry points check the sizes they divide by (no SIGFPE)."""
    ext = cpu._extension()
    spec = lstmlab.get_cell("lstm")
    from lstmlab.backends.csrc.layout import plan

    pl = plan(spec, 8, (0, 8), False)
    none, idx = torch.zeros(0), torch.zeros(0, dtype=torch.long)

    def call(x, bounds=pl.bounds):
        B = x.shape[1]
        return ext.forward(
            ext.Cell(**pl.cfg),
            bounds,
            1,
            x,
            torch.zeros(B, 8),
            torch.zeros(B, 8),
            torch.zeros(32, 4),
            torch.zeros(32),
            torch.zeros(32, 8),
            none,
            idx,
            idx,
            none,
            idx,
            False,
            False,
            [0, 0, 0, 0, 0],
            none,
        )

    with pytest.raises(RuntimeError, match=r"at least one step and one batch row"):
        call(torch.zeros(5, 0, 4))
    with pytest.raises(RuntimeError, match=r"at least one step and one batch row"):
        call(torch.zeros(0, 2, 4))
    with pytest.raises(RuntimeError, match=r"bad slices"):
        call(torch.zeros(5, 2, 4), [0])
    assert call(torch.zeros(5, 2, 4))[0].shape == (5, 2, 8)
