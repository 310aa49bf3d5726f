"""The one table of activations, lstmlab.cells.ACTIVATIONS, against everything else that
knows them: each derivative against autograd's, the kernel's table of codes against it
(the kernel's names are ours with the same codes; a table that differs is refused when the
kernel loads, an unknown code by the kernel itself; ours the kernel lacks are run by the
reference backend), and the kernel's forward and derivative of every activation,
in each place a cell applies one, against the reference backend in float64."""

import dataclasses
import re
import types

import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab.backends import cpu, csrc, reference
from lstmlab.backends.csrc.layout import check_activations
from lstmlab.cells import ACTIVATIONS

NAMES = list(ACTIVATIONS)
F64 = torch.float64


@pytest.fixture(scope="module")
def ext(cpu_backend):
    return cpu._extension()


def test_every_activation_the_kernel_knows_has_our_code(ext):
    assert dict(ext.activations) == {name: ACTIVATIONS[name].code for name in ext.activations}
    # g_min (Feng et al.'s minlstm / mingru, issue #13) is the one the kernel may not know yet
    assert set(ACTIVATIONS) - set(ext.activations) <= {"g_min"}


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


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "cell,field", [("rnn-tanh", "activation"), ("lstm", "activation"), ("lstm", "output_activation")]
)
def test_the_kernel_applies_and_differentiates_each_activation_as_the_reference(ext, name, cell, field):
    if name not in ext.activations:
        pytest.skip(f"the kernel has no {name!r} (issue #13); the cpu backend hands it to the reference backend")
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


@pytest.mark.parametrize("cell,index,field", [("rnn-tanh", 1, "activation"), ("lstm", 2, "output_activation")])
def test_the_kernel_rejects_an_unknown_activation_code(ext, monkeypatch, cell, index, field):
    real = cpu.layout_plan

    def bad_plan(*args):
        p = real(*args)
        return dataclasses.replace(p, cfg=[*p.cfg[:index], 99, *p.cfg[index + 1 :]])

    monkeypatch.setattr(cpu, "layout_plan", bad_plan)
    m = lstmlab.Recurrent(2, 3, cell=cell, dtype=F64, backend="reference")
    x = torch.randn(2, 1, 2, dtype=F64)
    state = tuple(torch.zeros(1, 3, dtype=F64) for _ in m.spec.state_names)
    known = ", ".join(f"{n}={a.code}" for n, a in ACTIVATIONS.items() if n in ext.activations)
    with pytest.raises(RuntimeError, match=re.escape(f"{field} code 99 is unknown; known codes: {known}")):
        cpu.run_layer(m.spec, m.cell_params(0), x, state)


def test_a_kernel_table_that_disagrees_is_refused_naming_each_difference():
    kernel = {name: a.code for name, a in ACTIVATIONS.items()}
    assert check_activations(kernel) == frozenset()  # agrees: nothing raised, nothing lacking
    del kernel["h1997"]
    assert check_activations(kernel) == {"h1997"}  # one it lacks: not an error, but reported
    kernel["relu"] = 7
    kernel["gelu"] = 99
    with pytest.raises(csrc.BuildError) as e:
        check_activations(kernel)
    msg = str(e.value)
    assert "h1997" not in msg
    assert "'gelu' is 99 in the kernel but not in lstmlab.cells.ACTIVATIONS" in msg
    assert "'relu' is 2 in lstmlab.cells.ACTIVATIONS but 7 in the kernel" in msg


def test_a_cell_with_an_activation_the_kernel_lacks_runs_on_the_reference_backend(ext, monkeypatch):
    monkeypatch.setattr(cpu, "_ext_lacks", frozenset({"h1997"}))
    monkeypatch.setattr(cpu, "_warned", set())
    m = lstmlab.Recurrent(2, 3, cell="lstm1997", dtype=F64, backend="reference")
    x = torch.randn(4, 2, 2, dtype=F64)
    state = reference.zero_state(m.spec, 2, 3, x)
    with pytest.warns(UserWarning, match="the kernel has no activation 'h1997'; using the reference backend"):
        got = cpu.run_layer(m.spec, m.cell_params(0), x, state)
    want = reference.run_layer(m.spec, m.cell_params(0), x, state)
    assert_close(got[0], want[0], tol="exact")


def test_a_kernel_that_disagrees_is_not_used(monkeypatch):
    fake = types.SimpleNamespace(activations={"tanh": 1}, vector_bytes=64)
    monkeypatch.setattr(cpu, "_ext", None)
    monkeypatch.setattr(cpu, "_ext_error", None)
    monkeypatch.setattr(csrc, "load", lambda: fake)
    ok, why = cpu.available()
    assert not ok
    assert "'tanh' is 0 in lstmlab.cells.ACTIVATIONS but 1 in the kernel" in why
    with pytest.raises(RuntimeError, match="disagree with lstmlab.cells.ACTIVATIONS"):
        cpu._extension()
