"""The one table of activations, lstmlab.cells.ACTIVATIONS, against everything else that
knows them: each derivative against autograd's, the kernel's table of codes against it
(the kernel's activations have ACTIVATIONS' codes; the checks of the kernel's tables at load
and of a Cell's codes are in test_backend_cpu_boundary.py), and the kernel's forward and
derivative of every activation it computes, in each place a cell applies one, against the
reference backend in float64."""

import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab.backends import cpu, reference
from lstmlab.backends.csrc.boundary import KERNEL_ACTIVATIONS, activation_codes
from lstmlab.cells import ACTIVATIONS

NAMES = list(ACTIVATIONS)
F64 = torch.float64


@pytest.fixture(scope="module")
def ext(cpu_backend):
    return cpu._extension()


def test_the_kernels_activations_have_the_codes_of_activations(ext):
    assert set(KERNEL_ACTIVATIONS) <= set(ACTIVATIONS)
    assert dict(ext.activations) == {name: ACTIVATIONS[name].code for name in KERNEL_ACTIVATIONS}
    assert activation_codes() == dict(ext.activations)


def test_the_codes_are_distinct():
    codes = [a.code for a in ACTIVATIONS.values()]
    assert len(set(codes)) == len(codes), codes


@pytest.mark.parametrize("name", NAMES)
def test_grad_is_autograds_derivative_and_fn_stays_in_range(name):
    act = ACTIVATIONS[name]
    x = torch.linspace(-8, 8, 1000, dtype=F64, requires_grad=True)  # 0 is not among them (relu's kink)
    y = act.fn(x)
    (d,) = torch.autograd.grad(y.sum(), x)
    assert_close(act.grad(x.detach()), d, tol="float64_closed_form")
    lo, hi = act.range
    assert bool(((y >= lo) & (y <= hi)).all())


def run_and_differentiate(backend, m, x, state):
    """Output, final state and cells of one run_layer, and the gradients of a fixed random
    projection of them with respect to x, the state and every weight."""
    out, final, cells = backend.run_layer(m.spec, m.cell_params(0), x, state, return_cells=m.spec.kind == "lstm")
    outs = [out, *final] + ([cells] if cells is not None else [])
    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
    leaves = [x, *state, *m.parameters()]
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, cot))


GENERIC_PLACES = [("rnn-tanh", "activation"), ("lstm", "activation"), ("lstm", "output_activation")]
# g_min is the kernel's for the min cells' candidate only (tests/test_backend_cpu.py runs those)
GENERIC_ACTIVATIONS = [n for n in KERNEL_ACTIVATIONS if n != "g_min"]


@pytest.mark.parametrize("cell,field", GENERIC_PLACES)
def test_the_kernel_refuses_g_min_in_the_generic_cells(cell, field):
    spec = lstmlab.get_cell(cell).with_options(**{field: "g_min"})
    ok, why = cpu.supports(spec)
    assert not ok and "g_min" in why
    with pytest.raises(ValueError, match="g_min"):
        lstmlab.Recurrent(3, 6, cell=cell, backend="cpu", **{field: "g_min"})


@pytest.mark.parametrize("name", GENERIC_ACTIVATIONS)
@pytest.mark.parametrize("cell,field", GENERIC_PLACES)
def test_the_kernel_applies_and_differentiates_each_activation_as_the_reference(ext, name, cell, field):
    torch.manual_seed(3)
    m = lstmlab.Recurrent(3, 6, cell=cell, dtype=F64, backend="reference", **{field: name})
    assert getattr(m.spec, field) == name
    g = torch.Generator().manual_seed(5)
    x = (2 * torch.randn(7, 4, 3, generator=g, dtype=F64)).requires_grad_()  # into the saturated ranges too
    state = tuple(torch.randn(4, 6, generator=g, dtype=F64).requires_grad_() for _ in m.spec.state_names)
    want = run_and_differentiate(reference, m, x, state)
    got = run_and_differentiate(cpu, m, x, state)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, F64, msg=f"{cell} with {field}={name}: entry {k}")
