"""The boundary between Python and the cpu kernel (csrc/boundary.py, csrc/cells.h Cell):
the kernel's cell is made by name and every field checked when it is made (an enum code
outside its table, an index out of range, a missing or unknown name: an error naming the
field and value); the kernel's exported tables are checked against Python's mirror when it
loads (a kernel that disagrees is not used); supports() admits every registered cell and
refuses, with the reason, a cell the kernel cannot run, which backend="cpu" then refuses by
name while backend="auto" runs it on the reference backend with one warning."""

import dataclasses
import re
import types
import warnings

import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab import backends
from lstmlab.backends import cpu, csrc, reference
from lstmlab.backends.csrc import boundary
from lstmlab.backends.csrc.layout import plan
from lstmlab.backends.reference import CellParams
from lstmlab.cells import ACTIVATIONS, Activation, CellSpec
from lstmlab.errors import ArgumentError

F64 = torch.float64


@pytest.fixture(scope="module")
def ext(cpu_backend):
    return cpu._extension()


# ---- the Cell, by name, checked when made ------------------------------------------------
# the cells of the generic kernel (the modern kinds cross as codes, csrc/modern.h)
@pytest.mark.parametrize("name", [n for n in lstmlab.cell_names() if lstmlab.get_cell(n).kind in boundary.KINDS])
def test_every_cells_plan_names_each_field_of_the_kernels_cell_once(ext, name):
    cfg = plan(lstmlab.get_cell(name), 6, (0, 3, 6), False).cfg
    assert tuple(cfg) == boundary.CELL_FIELDS == tuple(ext.cell_fields)
    assert ext.Cell(**cfg).to_dict() == cfg


def lstm_cfg():
    return dict(plan(lstmlab.get_cell("lstm"), 4, (0, 4), False).cfg)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("kind", 7, "Cell field kind=7 is not a code of its enum; known codes: rnn=0, lstm=1, gru=2"),
        ("forget", 3, "Cell field forget=3 is not a code of its enum; known codes: free=0, coupled=1, none=2"),
        ("activation", 99, "Cell field activation=99 is not a code of its enum; known codes: tanh=0, sigmoid=1, "),
        ("output_activation", -1, "Cell field output_activation=-1 is not a code of its enum"),
        ("block_i", 4, "Cell field block_i=4 is out of range; allowed: -1 to 3"),
        ("n_fed", 4, "Cell field n_fed=4 is out of range; allowed: 0 to 3"),
        ("truncate", 2, "Cell field truncate=2 is out of range; allowed: 0 to 1"),
        ("peep_o", 3, "Cell field peep_o=3 is out of range; allowed: -1 to 2"),
        ("fed_f", 0, "Cell field fed_f=0 is not an a-block of S; allowed: -1 (none) or 1 to 0"),
    ],
)
def test_a_code_outside_its_enum_or_range_is_refused_naming_the_field_and_value(ext, field, value, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ext.Cell(**{**lstm_cfg(), field: value})


def test_a_missing_unknown_or_non_integer_field_is_refused(ext):
    cfg = lstm_cfg()
    del cfg["fed_o"]
    with pytest.raises(RuntimeError, match="Cell field fed_o is missing"):
        ext.Cell(**cfg)
    with pytest.raises(RuntimeError, match="Cell has no field heads; its fields: kind, activation, "):
        ext.Cell(**lstm_cfg(), heads=1)
    with pytest.raises(RuntimeError, match=r"Cell field kind='lstm' is not a whole number"):
        ext.Cell(**{**lstm_cfg(), "kind": "lstm"})


def test_the_kinds_gates_row_is_checked(ext):
    gru = dict(plan(lstmlab.get_cell("gru"), 4, (0, 4), False).cfg)
    with pytest.raises(RuntimeError, match=r"a gru Cell has the blocks r z hn n.*n_blocks=3"):
        ext.Cell(**{**gru, "n_blocks": 3, "n_rec_blocks": 3})
    with pytest.raises(RuntimeError, match="an lstm Cell needs block_g"):
        ext.Cell(**{**lstm_cfg(), "block_g": -1})


def test_a_cell_cannot_be_changed_after_it_was_checked(ext):
    cell = ext.Cell(**lstm_cfg())
    with pytest.raises(AttributeError):
        cell.kind = 7


# ---- the tables, checked at load ---------------------------------------------------------
def kernel_tables(**changes):
    tables = {
        "cell_fields": list(boundary.CELL_FIELDS),
        "kinds": dict(boundary.KINDS),
        "forget_modes": dict(boundary.FORGET_MODES),
        "gru_blocks": dict(boundary.GRU_BLOCKS),
        "activations": boundary.activation_codes(),
        "modern_kinds": dict(boundary.MODERN_KINDS),
        "forget_activations": dict(boundary.FORGET_ACTIVATIONS),
        "vector_bytes": 64,
    }
    return types.SimpleNamespace(**{**tables, **changes})


def test_the_real_kernels_tables_agree(ext):
    boundary.check_kernel(ext)  # nothing raised
    assert dict(ext.kinds) == {"rnn": 0, "lstm": 1, "gru": 2}
    assert dict(ext.modern_kinds) == {"slstm": 0, "minlstm": 1, "mingru": 2}
    assert set(boundary.KINDS) | set(boundary.MODERN_KINDS) == set(lstmlab.cells.spec.KINDS)
    assert set(boundary.FORGET_ACTIVATIONS) == set(lstmlab.cells.spec.FORGET_ACTIVATIONS)
    assert set(boundary.KINDS) <= set(lstmlab.cells.spec.KINDS)
    assert set(boundary.FORGET_MODES) == set(lstmlab.cells.spec.FORGET_MODES)


def test_tables_that_disagree_are_refused_naming_each_difference():
    boundary.check_kernel(kernel_tables())  # agrees: nothing raised
    fields = list(boundary.CELL_FIELDS)
    fields[0], fields[1] = fields[1], fields[0]
    bad = kernel_tables(
        cell_fields=fields,
        kinds={"rnn": 0, "lstm": 2, "gru": 1},
        forget_modes={"free": 0, "coupled": 1},
        gru_blocks={**boundary.GRU_BLOCKS, "x": 4},
        activations={**boundary.activation_codes(), "relu": 7, "gelu": 9},
        modern_kinds={"slstm": 0, "minlstm": 2, "mingru": 1},
        forget_activations={"sigmoid": 0},
    )
    with pytest.raises(csrc.BuildError) as e:
        boundary.check_kernel(bad)
    msg = str(e.value)
    assert "the Cell's fields are ['activation', 'kind', " in msg
    assert "kind 'lstm' is 1 here but 2 in the kernel" in msg
    assert "kind 'gru' is 2 here but 1 in the kernel" in msg
    assert "forget mode 'none' is 2 here but unknown to the kernel" in msg
    assert "gru block 'x' is 4 in the kernel but unknown here" in msg
    assert "activation 'relu' is 2 here but 7 in the kernel" in msg
    assert "activation 'gelu' is 9 in the kernel but unknown here" in msg
    assert "modern kind 'minlstm' is 1 here but 2 in the kernel" in msg
    assert "forget activation 'exp' is 1 here but unknown to the kernel" in msg


def test_an_activation_the_kernel_lacks_is_allowed_but_one_it_has_must_be_in_activations(monkeypatch):
    monkeypatch.setitem(
        ACTIVATIONS, "softsign", Activation("softsign", torch.nn.functional.softsign, None, (-1, 1), 99)
    )
    boundary.check_kernel(kernel_tables())  # a Python-only activation: the kernel's cells just do not use it
    monkeypatch.setattr(boundary, "KERNEL_ACTIVATIONS", (*boundary.KERNEL_ACTIVATIONS, "gelu"))
    with pytest.raises(csrc.BuildError, match="activation 'gelu' is in KERNEL_ACTIVATIONS but not in"):
        boundary.check_kernel(kernel_tables())


def test_a_kernel_that_disagrees_is_not_used(monkeypatch):
    fake = kernel_tables(kinds={"rnn": 0, "lstm": 1, "gru": 3})
    monkeypatch.setattr(cpu, "_ext", None)
    monkeypatch.setattr(cpu, "_ext_error", None)
    monkeypatch.setattr(csrc, "load", lambda: fake)
    ok, why = cpu.available()
    assert not ok
    assert "kind 'gru' is 2 here but 3 in the kernel" in why
    with pytest.raises(RuntimeError, match="disagree with lstmlab.backends.csrc.boundary"):
        cpu._extension()


# ---- supports(), and how backends use it -------------------------------------------------
@pytest.mark.parametrize("name", lstmlab.cell_names())
def test_every_registered_cell_is_supported_by_the_reference_and_by_cpu(name):
    spec = lstmlab.get_cell(name)
    assert cpu.supports(spec) == (True, "")
    assert reference.supports(spec) == (True, "")


@pytest.mark.parametrize(
    "kind,options",
    [
        ("slstm", dict(heads=1, forget_activation="sigmoid")),
        ("slstm", dict(heads=4, forget_activation="exp")),
        ("minlstm", dict(activation="identity")),
        ("mingru", dict(activation="g_min")),
    ],
)
def test_the_modern_cells_options_are_supported(kind, options):
    assert cpu.supports(CellSpec(f"x-{kind}", kind, "", **options)) == (True, "")


def test_g_min_is_computed_for_the_min_cells_only():
    ok, why = cpu.supports(CellSpec("rnn-gmin", "rnn", "", activation="g_min"))
    assert not ok and why == "the kernel computes activation 'g_min' for the minlstm and mingru cells only"


@dataclasses.dataclass(frozen=True)
class ExpertSpec(CellSpec):
    """A CellSpec with a field the kernel does not know (as a newer cell's options)."""

    experts: int = 1


def test_an_unknown_kind_or_field_is_refused_with_the_reason():
    spec = dataclasses.replace(lstmlab.get_cell("lstm"), name="fake-slstm")
    object.__setattr__(spec, "kind", "mlstm")  # past CellSpec's own check, as a kind registered later
    assert cpu.supports(spec) == (
        False,
        "kind 'mlstm' is not one the kernel computes (rnn, lstm, gru, slstm, minlstm, mingru)",
    )
    assert reference.supports(spec) == (True, "")
    assert cpu.supports(ExpertSpec("e1", "lstm", "", experts=1)) == (True, "")
    assert cpu.supports(ExpertSpec("e2", "lstm", "", experts=2)) == (
        False,
        "the kernel does not know the cell field experts (here 2)",
    )
    with pytest.raises(ArgumentError, match="cell 'fake-slstm' cannot run on backend 'cpu': kind 'mlstm'"):
        cpu.run_layer(
            spec, CellParams(torch.zeros(16, 2), torch.zeros(16, 4)), torch.zeros(3, 1, 2), (torch.zeros(1, 4),) * 2
        )


@pytest.fixture
def softsign_rnn(monkeypatch):
    """An rnn cell with an activation ACTIVATIONS has and the kernel does not, and a fresh
    record of what backend='auto' warned about."""
    softsign = torch.nn.functional.softsign
    grad = lambda x: 1 / (1 + x.abs()) ** 2
    monkeypatch.setitem(ACTIVATIONS, "softsign", Activation("softsign", softsign, grad, (-1.0, 1.0), 99))
    monkeypatch.setattr(backends, "_WARNED", set())
    monkeypatch.setattr(backends, "_SUPPORTS", {})
    return CellSpec(name="rnn-softsign", kind="rnn", summary="h = softsign(W x + R h + b)", activation="softsign")


def test_backend_cpu_refuses_a_cell_it_cannot_run_naming_cell_backend_and_reason(softsign_rnn):
    ok, why = cpu.supports(softsign_rnn)
    assert not ok and why.startswith("activation='softsign' is not an activation the kernel computes (tanh, ")
    message = f"backend='cpu' cannot run cell 'rnn-softsign': {why}"
    with pytest.raises(ArgumentError, match=re.escape(message)):
        lstmlab.Recurrent(2, 3, cell=softsign_rnn, backend="cpu")
    with pytest.raises(ArgumentError, match="backend='cpu' cannot run cell 'rnn-softsign'"):
        backends.get_backend("cpu", "cpu", softsign_rnn)


def test_backend_auto_runs_it_on_the_reference_warning_once(softsign_rnn, cpu_backend):
    torch.manual_seed(0)
    m = lstmlab.Recurrent(2, 3, cell=softsign_rnn, dtype=F64)
    x = torch.randn(5, 4, 2, dtype=F64)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = [m(x)[0] for _ in range(3)]
    said = [str(r.message) for r in w]
    assert said == [
        "lstmlab: backend 'cpu' cannot run cell 'rnn-softsign' (activation='softsign' is not an activation the "
        f"kernel computes ({', '.join(boundary.KERNEL_ACTIVATIONS)})); using 'reference' for it"
    ]
    assert backends.get_backend("auto", "cpu", lstmlab.get_cell("rnn-tanh")) is cpu  # other cells still on cpu
    # the recurrence written out: h_t = softsign(W x_t + b_ih + R h_{t-1} + b_hh)
    h = torch.zeros(4, 3, dtype=F64)
    want = []
    for t in range(5):
        h = torch.nn.functional.softsign(x[t] @ m.weight_ih_l0.T + m.bias_ih_l0 + h @ m.weight_hh_l0.T + m.bias_hh_l0)
        want.append(h)
    for out in outs:
        assert_close(out, torch.stack(want))


def test_auto_chooses_by_cell_under_torch_export(softsign_rnn, cpu_backend):
    """The choice is a constant of the trace (backends._resolve takes the spec as one): a
    cell the kernel computes exports with the kernel's operator, one it does not with the
    reference's operations, each computing what eager does."""
    x = torch.randn(4, 2, 2, dtype=F64)
    for cell, kernel in ((lstmlab.get_cell("rnn-tanh"), True), (softsign_rnn, False)):
        torch.manual_seed(0)
        m = lstmlab.Recurrent(2, 3, cell=cell, dtype=F64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = m(x)[0]
            exported = torch.export.export(m, (x,))
        ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
        assert ("lstmlab.layer_forward.default" in ops) == kernel, ops
        assert_close(exported.module()(x)[0], want)
