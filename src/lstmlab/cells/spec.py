"""The declarative definition of a recurrent cell.

A cell is a frozen `CellSpec`: which gates exist, how the forget gate is formed, the
squashing functions, peepholes, gate recurrence and whether the 1997 truncated gradient
is the default. Everything else (parameter layout, the reference step, the Jacobians of
the state map, the fast kernels) is derived from these fields, so a new cell is one new
definition. The equations are in docs/cells.md and in `lstmlab.backends.reference`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from ..errors import ArgumentError

# ---------------------------------------------------------------------------------------
# Squashing functions: the one table of them. The reference backend applies `fn`; the
# closed-form Jacobians (lstmlab.analysis.jacobians) and the 1-D theory (lstmlab.theory)
# use `grad`, the derivative with respect to the input; the C++ kernel knows each by its
# `code` (csrc/vecmath.h `Act`, whose own derivatives are written in terms of the output).
# The kernel exports its table of codes and lstmlab.backends.csrc.layout checks that it
# agrees with this one when the kernel loads.


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]  # d fn(x) / dx, as a function of x
    range: tuple[float, float]
    code: int  # the kernel's code for it (csrc/vecmath.h enum Act)


def _sig_grad(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("tanh", torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, (-1.0, 1.0), 0),
        Activation("sigmoid", torch.sigmoid, _sig_grad, (0.0, 1.0), 1),
        Activation("relu", torch.relu, lambda x: (x > 0).to(x.dtype), (0.0, float("inf")), 2),
        Activation("identity", lambda x: x, torch.ones_like, (float("-inf"), float("inf")), 3),
        # Hochreiter & Schmidhuber 1997: cell input g(x) = 4 sigma(x) - 2 in [-2, 2],
        # cell output h(x) = 2 sigma(x) - 1 in [-1, 1].
        Activation("g1997", lambda x: 4 * torch.sigmoid(x) - 2, lambda x: 4 * _sig_grad(x), (-2.0, 2.0), 4),
        Activation("h1997", lambda x: 2 * torch.sigmoid(x) - 1, lambda x: 2 * _sig_grad(x), (-1.0, 1.0), 5),
    ]
}

KINDS = ("rnn", "lstm", "gru")
FORGET_MODES = ("free", "coupled", "none")
# Fields a user may override per layer (Recurrent(..., peepholes=True)), by cell kind.
OVERRIDABLE = {
    "rnn": ("activation",),
    "gru": (),
    "lstm": (
        "input_gate",
        "forget_gate",
        "output_gate",
        "peepholes",
        "gate_recurrence",
        "activation",
        "output_activation",
    ),
}

# The values each overridable field takes; booleans must be True or False, not truthy.
_OPTION_VALUES = {
    "input_gate": (False, True),
    "output_gate": (False, True),
    "peepholes": (False, True),
    "gate_recurrence": (False, True),
    "forget_gate": FORGET_MODES,
    "activation": tuple(ACTIVATIONS),
    "output_activation": tuple(ACTIVATIONS),
}


@dataclass(frozen=True)
class CellSpec:
    """One member of the family.

    kind: "rnn" (h = a(Wx + Rh + b)), "gru" (torch.nn.GRU's form) or "lstm" (the gated
        cell-state family; the fields below choose the member).
    summary: the defining change, one line, for tables and docs.
    activation: rnn: the nonlinearity a; lstm: the cell-input squashing g.
    output_activation: lstm: the squashing of the state in h = o * act(c).
    input_gate / output_gate: whether i / o exist (else fixed at 1).
    forget_gate: "free" (f = sigma(net_f)), "coupled" (f = 1 - i, CIFG) or "none" (f = 1).
    peepholes: gates i, f see c_{t-1} and o sees c_t through per-unit weights.
    gate_recurrence: the sigmoid gates also see the previous step's gate activations
        through full matrices (Greff's FGR); the state then includes those activations.
    truncate: default of the truncated gradient: gates and cell input read a detached
        recurrent state, so error flows back in time only along the cell state.
    torch_module: the torch.nn module this cell is state_dict-compatible with, if any.
    """

    name: str
    kind: str
    summary: str
    activation: str = "tanh"
    output_activation: str = "tanh"
    input_gate: bool = True
    forget_gate: str = "free"
    output_gate: bool = True
    peepholes: bool = False
    gate_recurrence: bool = False
    truncate: bool = False
    torch_module: str | None = None

    def __post_init__(self):
        def bad(field, value, allowed):
            raise ArgumentError(f"cell {self.name!r}: {field}={value!r} is not allowed; allowed: {allowed}")

        if self.kind not in KINDS:
            bad("kind", self.kind, KINDS)
        for f in ("activation", "output_activation"):
            if getattr(self, f) not in ACTIVATIONS:
                bad(f, getattr(self, f), sorted(ACTIVATIONS))
        if self.forget_gate not in FORGET_MODES:
            bad("forget_gate", self.forget_gate, FORGET_MODES)
        if self.kind != "lstm":
            defaults = {f.name: f.default for f in fields(CellSpec)}
            for f in OVERRIDABLE["lstm"]:
                if f != "activation" and getattr(self, f) != defaults[f]:
                    bad(f, getattr(self, f), f"the default ({defaults[f]!r}) for a {self.kind} cell")
            if self.truncate:
                bad("truncate", True, "False for a cell without a cell state")
        if self.forget_gate == "coupled" and not self.input_gate:
            bad("forget_gate", "coupled", "'free' or 'none' when there is no input gate")
        if self.gate_recurrence and not self.sigmoid_gates:
            bad("gate_recurrence", True, "False when the cell has no sigmoid gate")

    # ---- derived layout ----------------------------------------------------------------
    @property
    def gates(self) -> tuple[str, ...]:
        """Blocks of H rows stacked in weight_ih / weight_hh / biases, in torch's order."""
        if self.kind == "rnn":
            return ("h",)
        if self.kind == "gru":
            return ("r", "z", "n")
        order = [("i", self.input_gate), ("f", self.forget_gate == "free"), ("g", True), ("o", self.output_gate)]
        return tuple(g for g, present in order if present)

    @property
    def sigmoid_gates(self) -> tuple[str, ...]:
        """The LSTM gates with a pre-activation of their own (those of i, f, o present)."""
        return tuple(g for g in self.gates if g in "ifo") if self.kind == "lstm" else ()

    @property
    def peephole_gates(self) -> tuple[str, ...]:
        """Gates with a peephole weight vector, stacked in weight_ch in this order."""
        return self.sigmoid_gates if self.peepholes else ()

    @property
    def recurrent_gates(self) -> tuple[str, ...]:
        """Gates whose previous activations feed back through weight_gg (FGR)."""
        return self.sigmoid_gates if self.gate_recurrence else ()

    @property
    def state_names(self) -> tuple[str, ...]:
        """The recurrent state, in the order forward() returns it: h, then c, then the
        previous gate activations a (FGR only)."""
        if self.kind != "lstm":
            return ("h",)
        return ("h", "c", "a") if self.gate_recurrence else ("h", "c")

    def state_width(self, name: str) -> int:
        """Width of one state tensor in units of hidden_size."""
        return len(self.recurrent_gates) if name == "a" else 1

    def num_parameters(self, input_size: int, hidden_size: int, bias: bool = True) -> int:
        """Parameters of one layer and direction (torch's layout: two bias vectors)."""
        G, H = len(self.gates), hidden_size
        n = G * H * (input_size + H) + (2 * G * H if bias else 0)
        n += len(self.peephole_gates) * H
        n += (len(self.recurrent_gates) * H) ** 2
        return n

    def with_options(self, **options) -> CellSpec:
        """A variant of this cell with some fields changed (e.g. peepholes=True).

        Raises ValueError naming the option if this kind of cell does not have it.
        """
        allowed = OVERRIDABLE[self.kind]
        for key, value in options.items():
            if key not in allowed:
                raise ArgumentError(
                    f"cell {self.name!r} has no option {key!r}; "
                    f"options for a {self.kind} cell: {list(allowed) or 'none'}"
                )
            choices = _OPTION_VALUES[key]
            if isinstance(value, bool) != (choices == (False, True)) or value not in choices:
                raise ArgumentError(
                    f"cell {self.name!r}: {key}={value!r} is not allowed; allowed: {' or '.join(map(repr, choices))}"
                )
        changed = {k: v for k, v in options.items() if getattr(self, k) != v}
        if not changed:
            return self
        tag = ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
        return replace(self, name=f"{self.name}[{tag}]", summary=f"{self.summary}; {tag}", torch_module=None, **changed)
