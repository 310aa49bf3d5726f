"""The declarative definition of a recurrent cell.

A cell is a frozen `CellSpec`: which gates exist, how the forget gate is formed, the
squashing functions, peepholes, gate recurrence and whether the 1997 truncated gradient
is the default. Everything else (parameter layout, the reference step, the Jacobians of
the state map, the fast kernels) is derived from these fields, so a new cell is one new
definition. The equations are in docs/cells.md and in `lstmlab.backends.reference`.
"""

from __future__ import annotations

import math
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


def _g_min(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def _g_min_grad(x):
    return torch.where(x >= 0, torch.ones_like(x), _sig_grad(x))


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
        # Feng et al. 2024 (minGRU, minLSTM): g(x) = x + 1/2 for x >= 0, sigma(x) otherwise;
        # continuous, positive (so their log-space scan applies), linear for large x.
        Activation("g_min", _g_min, _g_min_grad, (0.0, float("inf")), 6),
    ]
}

KINDS = ("rnn", "lstm", "gru", "slstm", "minlstm", "mingru")
FORGET_MODES = ("free", "coupled", "none")
FORGET_ACTIVATIONS = ("sigmoid", "exp")  # slstm: log f = logsigmoid(k_f), or k_f
MIN_ACTIVATIONS = ("g_min", "identity")  # minlstm / mingru: the candidate state h~ = act(k_h)
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
    "slstm": ("heads", "forget_activation"),
    "minlstm": ("activation",),
    "mingru": ("activation",),
}
# The LSTM fields that only the lstm kind uses: every other kind keeps their defaults.
_LSTM_ONLY = ("output_activation", "input_gate", "forget_gate", "output_gate", "peepholes", "gate_recurrence")
# The slstm fields, at their defaults in every other kind.
_SLSTM_ONLY = ("heads", "forget_activation")

# The values each overridable field takes; booleans must be True or False, not truthy.
_OPTION_VALUES = {
    "input_gate": (False, True),
    "output_gate": (False, True),
    "peepholes": (False, True),
    "gate_recurrence": (False, True),
    "forget_gate": FORGET_MODES,
    "activation": tuple(ACTIVATIONS),
    "output_activation": tuple(ACTIVATIONS),
    "forget_activation": FORGET_ACTIVATIONS,
}


@dataclass(frozen=True)
class CellSpec:
    """One member of the family.

    kind: "rnn" (h = a(Wx + Rh + b)), "gru" (torch.nn.GRU's form), "lstm" (the gated
        cell-state family; the fields below choose the member), "slstm" (Beck et al. 2024,
        xLSTM's scalar-memory LSTM: exponential input gate, normaliser n, stabiliser m),
        "minlstm" / "mingru" (Feng et al. 2024: gates of the input alone, no recurrent
        weights). The equations are in docs/cells.md and lstmlab.backends.reference.
    summary: the defining change, one line, for tables and docs.
    activation: rnn: the nonlinearity a; lstm: the cell-input squashing g; minlstm /
        mingru: the candidate state's h~ = act(k_h), "g_min" (the paper's) or "identity".
    output_activation: lstm: the squashing of the state in h = o * act(c).
    input_gate / output_gate: whether i / o exist (else fixed at 1).
    forget_gate: "free" (f = sigma(net_f)), "coupled" (f = 1 - i, CIFG) or "none" (f = 1).
    peepholes: gates i, f see c_{t-1} and o sees c_t through per-unit weights.
    gate_recurrence: the sigmoid gates also see the previous step's gate activations
        through full matrices (Greff's FGR); the state then includes those activations.
    truncate: default of the truncated gradient: gates and cell input read a detached
        recurrent state, so error flows back in time only along the cell state.
    heads: slstm: the recurrent matrix is block-diagonal with this many blocks (heads) of
        H / heads units; each unit's gates see only its head's part of h_{t-1}.
    forget_activation: slstm: "sigmoid" (log f = logsigmoid(k_f)) or "exp" (log f = k_f).
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
    heads: int = 1
    forget_activation: str = "sigmoid"

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
        defaults = {f.name: f.default for f in fields(CellSpec)}
        unused = () if self.kind == "lstm" else _LSTM_ONLY
        unused += ("activation",) if self.kind == "slstm" else ()
        unused += () if self.kind == "slstm" else _SLSTM_ONLY
        for f in unused:
            if getattr(self, f) != defaults[f]:
                bad(f, getattr(self, f), f"the default ({defaults[f]!r}) for a {self.kind} cell")
        if self.truncate and self.kind != "lstm":
            bad("truncate", True, "False for a cell that is not of the lstm kind")
        if self.kind in ("minlstm", "mingru") and self.activation not in MIN_ACTIVATIONS:
            bad("activation", self.activation, " or ".join(map(repr, MIN_ACTIVATIONS)))
        if isinstance(self.heads, bool) or not isinstance(self.heads, int) or self.heads < 1:
            bad("heads", self.heads, "an int >= 1")
        if self.forget_activation not in FORGET_ACTIVATIONS:
            bad("forget_activation", self.forget_activation, " or ".join(map(repr, FORGET_ACTIVATIONS)))
        if self.forget_gate == "coupled" and not self.input_gate:
            bad("forget_gate", "coupled", "'free' or 'none' when there is no input gate")
        if self.gate_recurrence and not self.sigmoid_gates:
            bad("gate_recurrence", True, "False when the cell has no sigmoid gate")

    # ---- derived layout ----------------------------------------------------------------
    @property
    def gates(self) -> tuple[str, ...]:
        """Blocks of H rows stacked in weight_ih (and weight_hh, biases), in torch's order:
        slstm i f z o (z the cell input), minlstm f i h (h the candidate h~), mingru z h."""
        fixed = {"rnn": ("h",), "gru": ("r", "z", "n"), "slstm": ("i", "f", "z", "o")}
        fixed.update(minlstm=("f", "i", "h"), mingru=("z", "h"))
        if self.kind in fixed:
            return fixed[self.kind]
        order = [("i", self.input_gate), ("f", self.forget_gate == "free"), ("g", True), ("o", self.output_gate)]
        return tuple(g for g, present in order if present)

    @property
    def recurrent_weights(self) -> bool:
        """Whether the gates see h_{t-1} through weight_hh (not minlstm / mingru, whose gates
        are functions of the input alone)."""
        return self.kind not in ("minlstm", "mingru")

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
        previous gate activations a (FGR only); slstm: h, c, n (normaliser), m (stabiliser)."""
        if self.kind == "slstm":
            return ("h", "c", "n", "m")
        if self.kind != "lstm":
            return ("h",)
        return ("h", "c", "a") if self.gate_recurrence else ("h", "c")

    def state_width(self, name: str) -> int:
        """Width of one state tensor in units of hidden_size."""
        return len(self.recurrent_gates) if name == "a" else 1

    def initial_value(self, name: str) -> float:
        """The default initial value of a state (zero_state): 0, except slstm's stabiliser
        m_0 = -inf, so that m_1 = log i_1 and the first step ignores c_0 and n_0."""
        return float("-inf") if name == "m" else 0.0

    @property
    def learnable_states(self) -> tuple[str, ...]:
        """The states whose initial value learn_init learns (parameters initial_<name>).
        slstm: h only: with m_0 = -inf the first step's f' is 0, c_0 and n_0 have no
        effect, and m is a stabiliser, not a value of the model (it stays -inf)."""
        return ("h",) if self.kind == "slstm" else self.state_names

    def head_size(self, hidden_size: int) -> int:
        """Units per head, H // heads (the columns of slstm's weight_hh). Raises ArgumentError
        if heads does not divide hidden_size."""
        if hidden_size % self.heads:
            divisors = [d for d in range(1, hidden_size + 1) if hidden_size % d == 0]
            raise ArgumentError(
                f"cell {self.name!r}: heads={self.heads} does not divide hidden_size={hidden_size}; "
                f"allowed: a divisor of hidden_size ({', '.join(map(str, divisors))})"
            )
        return hidden_size // self.heads

    def param_shapes(
        self, input_size: int, hidden_size: int, bias: bool = True, proj_size: int = 0
    ) -> dict[str, tuple[int, ...]]:
        """The parameters of one layer and direction: name -> shape, in torch's order.

        The names are lstmlab.backends.reference.CellParams's fields (a layer adds
        "_l{k}" and "_reverse"). G = len(gates), H = hidden_size, P = proj_size or H:
            weight_ih (G*H, I); bias_ih (G*H,) if bias;
            weight_hh (G*H, P), or (G*H, H // heads) for slstm (block-diagonal, compressed);
                bias_hh (G*H,) if bias; neither for minlstm / mingru;
            weight_hr (P, H) if proj_size (lstm kind only);
            weight_ch (K*H,) peepholes of the K = len(peephole_gates) gates;
            weight_gg (A*H, A*H) gate-to-gate matrices of the A = len(recurrent_gates) gates.
        Raises ArgumentError if heads does not divide hidden_size.
        """
        G, H = len(self.gates), hidden_size
        P = proj_size or H
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (G * H, input_size)}
        if self.recurrent_weights:
            shapes["weight_hh"] = (G * H, self.head_size(H) if self.kind == "slstm" else P)
        if bias:
            shapes["bias_ih"] = (G * H,)
            if self.recurrent_weights:
                shapes["bias_hh"] = (G * H,)
        if proj_size:
            shapes["weight_hr"] = (proj_size, H)
        if self.peephole_gates:
            shapes["weight_ch"] = (len(self.peephole_gates) * H,)
        if self.recurrent_gates:
            A = len(self.recurrent_gates)
            shapes["weight_gg"] = (A * H, A * H)
        return shapes

    def num_parameters(self, input_size: int, hidden_size: int, bias: bool = True) -> int:
        """Parameters of one layer and direction (the sum over param_shapes)."""
        return sum(math.prod(s) for s in self.param_shapes(input_size, hidden_size, bias).values())

    def with_options(self, **options) -> CellSpec:
        """A variant of this cell with some fields changed (e.g. peepholes=True).

        Raises ArgumentError naming the option if this kind of cell does not have it or the
        value is not one it takes.
        """
        allowed = OVERRIDABLE[self.kind]
        for key, value in options.items():
            if key not in allowed:
                raise ArgumentError(
                    f"cell {self.name!r} has no option {key!r}; "
                    f"options for a {self.kind} cell: {list(allowed) or 'none'}"
                )
            if key == "heads":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ArgumentError(
                        f"cell {self.name!r}: heads={value!r} is not allowed; allowed: an int >= 1 dividing hidden_size"
                    )
                continue
            choices = MIN_ACTIVATIONS if key == "activation" and self.kind in ("minlstm", "mingru") else None
            choices = choices or _OPTION_VALUES[key]
            if isinstance(value, bool) != (choices == (False, True)) or value not in choices:
                raise ArgumentError(
                    f"cell {self.name!r}: {key}={value!r} is not allowed; allowed: {' or '.join(map(repr, choices))}"
                )
        changed = {k: v for k, v in options.items() if getattr(self, k) != v}
        if not changed:
            return self
        tag = ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
        return replace(self, name=f"{self.name}[{tag}]", summary=f"{self.summary}; {tag}", torch_module=None, **changed)
