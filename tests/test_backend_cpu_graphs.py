"""The cpu backend under torch's graph tools, as torch.nn.LSTM works under them: the kernel is
the custom operator lstmlab::layer_forward (gradient: lstmlab::layer_backward). For lstm,
gru, rnn-tanh, the 1997 cell (peepholes off, truncated gradient), FGR and the modern cells
(slstm, minlstm, mingru, on their own path of the operator): torch.jit.trace,
torch.export, torch.func.grad / vmap and torch.compile(fullgraph=True) give eager's
outputs and gradients; torch.library.opcheck on sample inputs; GradNorms refuses a
compiled run."""

import functools

import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab.backends import cpu

CELLS = ["lstm", "gru", "rnn-tanh", "lstm1997", "fgr", "slstm", "minlstm", "mingru"]


pytestmark = pytest.mark.usefixtures("cpu_backend")


class Net(torch.nn.Module):
    """A two-layer bidirectional recurrent layer and a readout: output and final state used."""

    def __init__(self, cell):
        super().__init__()
        self.rnn = lstmlab.Recurrent(3, 5, cell=cell, num_layers=2, bidirectional=True, backend="cpu")
        self.out = torch.nn.Linear(10, 2)

    def forward(self, x):
        y, state = self.rnn(x)
        h = state if isinstance(state, torch.Tensor) else state[0]
        return self.out(y).sum(0) + h.sum(0).sum(-1, keepdim=True)


def net(cell, seed=0):
    torch.manual_seed(seed)
    return Net(cell)


def inputs(seed=1, T=6, B=4):
    return torch.randn(T, B, 3, generator=torch.Generator().manual_seed(seed))


def grads_of(model, x):
    """The gradients of a fixed scalar of model(x) with respect to x and every parameter."""
    x = x.clone().requires_grad_()
    model.zero_grad()
    y = model(x)
    (y * torch.arange(1.0, y.numel() + 1).view_as(y)).sum().backward()
    return y.detach(), [x.grad] + [p.grad.clone() for p in model.parameters()]


def same(got, want, what):
    y1, g1 = got
    y0, g0 = want
    assert_close(y1, y0, msg=f"{what}: output")
    for k, (a, b) in enumerate(zip(g1, g0, strict=True)):
        assert_close(a, b, msg=f"{what}: gradient {k}")


@pytest.mark.parametrize("cell", CELLS)
def test_jit_trace(cell):
    """Traced with torch's own check (the graph rerun and compared), then run at the traced
    batch size and at others: one row, none, and more rows than the trace's batch groups."""
    m, x = net(cell), inputs(B=32)
    with cpu.force_split(groups=2):  # a trace that splits its batch, as 2 threads would
        traced = torch.jit.trace(m, (x,))
    assert "lstmlab::layer_forward" in str(traced.inlined_graph)
    for B in (32, 1, 3, 0):
        x = inputs(2, B=B)
        same(grads_of(traced, x), grads_of(m, x), f"{cell} traced at batch 32, run at {B}")


def test_jit_trace_under_no_grad_still_differentiates():
    """Traced without grad, the kernel saves nothing for a backward; run with grad, the
    traced module's backward recomputes the layer (reference backend): eager's gradients."""
    m = net("lstm")
    with torch.no_grad():
        traced = torch.jit.trace(m, (inputs(),), check_trace=False)
    same(grads_of(traced, inputs(2)), grads_of(m, inputs(2)), "lstm traced under no_grad")


@pytest.mark.parametrize("cell", CELLS)
def test_export(cell):
    m, x = net(cell), inputs()
    ep = torch.export.export(m, (x,))
    assert "lstmlab.layer_forward" in str(ep.graph)
    assert_close(ep.module()(inputs(2)), m(inputs(2)))


@pytest.mark.parametrize("cell", CELLS)
def test_func_grad(cell):
    m, x = net(cell), inputs()
    loss = lambda x: m(x).square().sum()
    got = torch.func.grad(loss)(x)
    xr = x.clone().requires_grad_()
    loss(xr).backward()
    assert_close(got, xr.grad)


@pytest.mark.parametrize("cell", CELLS)
def test_func_vmap(cell):
    m = net(cell)
    xs = torch.stack([inputs(s) for s in range(3)])  # (N, T, B, I)
    with torch.no_grad():
        got = torch.func.vmap(m)(xs)
        want = torch.stack([m(x) for x in xs])
    assert_close(got, want)


def test_func_vmap_of_grad():
    """Per-sample input gradients: vmap over grad (the backward operator vmapped too)."""
    m = net("lstm")
    xs = torch.stack([inputs(s) for s in range(3)])
    loss = lambda x: m(x).square().sum()
    got = torch.func.vmap(torch.func.grad(loss))(xs)
    want = torch.stack([torch.func.grad(loss)(x) for x in xs])
    assert_close(got, want)


@pytest.mark.parametrize("cell", CELLS)
def test_compile_fullgraph(cell):
    torch._dynamo.reset()
    m = net(cell)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    same(grads_of(compiled, inputs(2)), grads_of(m, inputs(2)), f"{cell} compiled")


@pytest.mark.parametrize("cell", CELLS)
def test_compile_fullgraph_under_no_grad(cell):
    """Inference: the kernel saves nothing for a backward, and its absent results are each a
    tensor of their own (a custom operator's outputs may not alias one another)."""
    torch._dynamo.reset()
    m = net(cell)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_close(compiled(inputs(3)), m(inputs(3)))


def test_compile_inductor():
    torch._dynamo.reset()
    m = net("lstm")
    compiled = torch.compile(m, fullgraph=True)
    same(grads_of(compiled, inputs(2)), grads_of(m, inputs(2)), "lstm compiled by inductor")


def test_compiled_backward_runs_the_kernel():
    """The compiled backward calls lstmlab::layer_backward (not a recomputation)."""
    torch._dynamo.reset()
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    rec = AotEagerAndRecordGraphs()
    m = net("lstm")
    y = torch.compile(m, fullgraph=True, backend=rec)(inputs())
    y.sum().backward()
    assert len(rec.bw_graphs) == 1 and "lstmlab.layer_backward" in rec.bw_graphs[0].code


def test_grad_norms_refuse_a_compiled_run():
    torch._dynamo.reset()
    m = net("lstm")
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with cpu.GradNorms(), pytest.raises(Exception, match="GradNorms records eager runs only"):
        compiled(inputs())


@functools.lru_cache(maxsize=1)
def op_samples():
    """The operators' arguments for a few cells and options, as run_layer and its backward
    pass them: [(forward args, backward args)]."""
    calls = {"forward": [], "backward": []}
    real = {"forward": cpu._forward_impl, "backward": cpu._backward_impl}

    def spy(which):
        def op(*args):
            calls[which].append(args)
            return real[which](*args)

        return op

    cpu._forward_impl, cpu._backward_impl = spy("forward"), spy("backward")
    try:
        for cell, kw in SAMPLES:
            torch.manual_seed(0)
            m = lstmlab.Recurrent(2, 3, cell=cell, dtype=torch.float64, backend="cpu")
            x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
            state = tuple(
                torch.rand(3, m.spec.state_width(n) * 3, dtype=torch.float64, requires_grad=True)
                for n in m.spec.state_names
            )
            out, final, _ = cpu.run_layer(m.spec, m.cell_params(0), x, state, **kw)
            (out.sum() + sum(s.square().sum() for s in final)).backward()
    finally:
        cpu._forward_impl, cpu._backward_impl = real["forward"], real["backward"]
    return list(zip(calls["forward"], calls["backward"], strict=True))


SAMPLES = [
    ("lstm", {}),
    ("gru", {}),
    ("fgr", {"reverse": True}),
    ("lstm1997", {"return_cells": True}),
    ("rnn-tanh", {"lengths": torch.tensor([4, 2, 3])}),
]


@pytest.mark.parametrize("k", range(len(SAMPLES)))
def test_opcheck(k):
    """Schema, fake kernels (output shapes and strides), autograd registration, compiled
    forward and backward (torch.library.opcheck's tests) of both operators."""
    forward, backward = op_samples()[k]
    torch.library.opcheck(torch.ops.lstmlab.layer_forward.default, forward)
    # layer_backward runs in first-order backward passes only (no graph is built there; a
    # differentiable backward is the reference backend's): its arguments as they arrive
    detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t
    args = [[detach(t) for t in a] if isinstance(a, list) else detach(a) for a in backward]
    torch.library.opcheck(torch.ops.lstmlab.layer_backward.default, args)


def test_vmap_rule_of_the_backward_operator():
    """layer_backward under torch.func.vmap (its loop rule): vmapped over the gradients of
    the outputs, [g, 2 g] gives the gradients of g and twice them."""
    _, backward = op_samples()[0]
    cell, config, lengths, tensors, saved, grads = [
        [t.detach() if isinstance(t, torch.Tensor) else t for t in a] if isinstance(a, list) else a for a in backward
    ]
    op = torch.ops.lstmlab.layer_backward.default
    once = op(cell, config, lengths, tensors, saved, grads)
    batched = [None if g is None else torch.stack([g, 2 * g]) for g in grads]
    dims = [None if g is None else 0 for g in grads]
    got = torch.func.vmap(op, in_dims=(None, None, None, None, None, dims))(
        cell, config, lengths, tensors, saved, batched
    )
    assert len(got) == len(once)
    for a, b in zip(got[:-2], once[:-2]):  # the gradients (the norms are off: config's norms < 0)
        assert_close(a[0], b)
        assert_close(a[1], 2 * b)
    assert once[0].norm() > 0
