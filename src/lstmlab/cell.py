"""Single-step cells: lstmlab.LSTMCell, GRUCell, RNNCell, drop-ins for torch.nn.LSTMCell,
GRUCell and RNNCell for every cell of the family (cell=...), and lstmlab.RecurrentCell,
which takes any cell (also slstm, minlstm, mingru).

One call is one application of the state map s_t = F(x_t, s_{t-1}); the maths is
`lstmlab.backends.reference.step`, the specification every backend is tested against, so a
cell stepped by hand over a sequence gives exactly what lstmlab.Recurrent gives for it.
Parameters: CellSpec.param_shapes: weight_ih (G*H, I), weight_hh (G*H, H), bias_ih, bias_hh
(G*H,) (None with bias=False, as torch), plus weight_ch (K*H,) for cells with peepholes and
weight_gg (A*H, A*H) for fgr (slstm's weight_hh (G*H, H // heads); minlstm / mingru have no
weight_hh, bias_hh): the names of Recurrent's layer 0 without the "_l0".
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
from torch import nn

from .backends import _autocast_dtype, reference
from .backends.reference import CellParams
from .cells import CellSpec, cell_names, get_cell
from .errors import ArgumentError, InputError, InputTypeError
from .options import check_bool, check_int


class _Cell(nn.Module):
    """The shared body of the three cells; `_kind` is the kind of cell a class takes."""

    _kind = ""  # empty: any kind (RecurrentCell)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        device,
        dtype,
        cell: str | CellSpec,
        truncate: bool | None,
        cell_options: dict,
    ):
        super().__init__()
        check_int("input_size", input_size, 1)
        check_int("hidden_size", hidden_size, 1)
        check_bool("bias", bias)
        spec = get_cell(cell).with_options(**cell_options)
        if self._kind and spec.kind != self._kind:
            same = [n for n in cell_names() if get_cell(n).kind == self._kind]
            raise ArgumentError(
                f"cell={spec.name!r} is a {spec.kind} cell; lstmlab.{type(self).__name__} "
                f"takes a {self._kind} cell: {', '.join(same)}"
            )
        if truncate is not None:
            check_bool("truncate", truncate)
        if truncate and spec.kind != "lstm":
            raise ArgumentError(
                f"cell {spec.name!r} has no option 'truncate' (given True); it needs a cell state (an LSTM cell)"
            )
        self.spec = spec
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.truncate = spec.truncate if truncate is None else truncate
        kw = {"device": device, "dtype": dtype}
        shapes = spec.param_shapes(input_size, hidden_size, bias)
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))
        if not bias:  # torch's cells have the attributes, None
            self.register_parameter("bias_ih", None)
            if spec.recurrent_weights:
                self.register_parameter("bias_hh", None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every parameter, as torch.nn.RNNCellBase."""
        bound = 1 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            w.uniform_(-bound, bound)

    def cell_params(self) -> CellParams:
        return CellParams(**{f.name: getattr(self, f.name, None) for f in fields(CellParams)})

    def _step(self, input, hx) -> tuple[torch.Tensor, ...]:
        """Check the input and state as torch does, then one reference step."""
        name, spec, H = type(self).__name__, self.spec, self.hidden_size
        if not isinstance(input, torch.Tensor):
            raise InputTypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise InputError(
                f"{name}: input has {input.dim()} dimensions (shape {tuple(input.shape)}); "
                f"expected 2 (batch, input_size) or 1 (input_size)"
            )
        if input.dtype != self.weight_ih.dtype and not torch.is_autocast_enabled(input.device.type):
            raise InputError(
                f"{name}: input dtype {input.dtype} does not match the parameters' dtype {self.weight_ih.dtype}"
            )
        if input.shape[-1] != self.input_size:
            raise InputError(
                f"{name}: input has {input.shape[-1]} features (shape {tuple(input.shape)}); "
                f"expected input_size={self.input_size}"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        low = _autocast_dtype(x)  # under CPU autocast: its lower-precision dtype
        B = x.shape[0]
        if hx is None:
            state = reference.zero_state(spec, B, H, x)
        else:
            names = [f"{s}_0" for s in spec.state_names]
            if len(names) == 1 and isinstance(hx, torch.Tensor):
                hx = (hx,)
            elif len(names) == 1 or not isinstance(hx, (tuple, list)) or len(hx) != len(names):
                want = "a Tensor (h_0)" if len(names) == 1 else f"a tuple ({', '.join(names)})"
                raise InputTypeError(f"{name}: hx must be {want} for cell {spec.name!r}, got {type(hx).__name__}")
            state = []
            for n, s, t in zip(names, spec.state_names, hx):
                want = (B, spec.state_width(s) * H) if batched else (spec.state_width(s) * H,)
                if not isinstance(t, torch.Tensor):
                    raise InputTypeError(f"{name}: hx {n} must be a Tensor of shape {want}, got {type(t).__name__}")
                if tuple(t.shape) != want:
                    raise InputError(f"{name}: hx {n} has shape {tuple(t.shape)}; expected {want}")
                if (t.dtype != x.dtype and low is None) or t.device != x.device:
                    raise InputError(
                        f"{name}: hx {n} is {t.dtype} on {t.device}; expected {x.dtype} on {x.device} like the input"
                    )
                state.append(t if batched else t.unsqueeze(0))
        if low is None:
            new = reference.step(spec, self.cell_params(), x, tuple(state), self.truncate)
        else:
            new = self._autocast_step(x, tuple(state), low)
        return new if batched else tuple(t.squeeze(0) for t in new)

    def _autocast_step(self, x, state, low):
        """One step under CPU autocast as torch's cells take it: the products' operands
        rounded to `low`, computed in float32; the new state in `low` for the plain RNN
        (torch's RNNCell ends on its products), else in `low` promoted with the state's
        dtype (torch's LSTMCell and GRUCell combine the products with the previous state,
        zeros of the input's dtype when hx is not given)."""
        f32 = torch.float32
        rounded = lambda t: None if t is None else t.to(low).to(f32)
        p = CellParams(*(rounded(getattr(self.cell_params(), f)) for f in CellParams.__dataclass_fields__))
        with torch.autocast(x.device.type, enabled=False):
            new = reference.step(self.spec, p, rounded(x), tuple(rounded(s) for s in state), self.truncate)
        dtype = low if self.spec.kind == "rnn" else torch.promote_types(low, state[0].dtype)
        return tuple(t.to(dtype) for t in new)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.spec.name != self._default_cell:
            s += f", cell={self.spec.name!r}"
        if self.truncate != self.spec.truncate:
            s += f", truncate={self.truncate}"
        return s


class LSTMCell(_Cell):
    r"""torch.nn.LSTMCell for any LSTM cell of the family (cell="lstm" by default).

    Args: input_size, hidden_size, bias=True, device=None, dtype=None as torch; keyword-only:
        cell (lstm, lstm1997, vanilla, nig, ..., fgr), truncate (the 1997 truncated gradient;
        None: the cell's default) and cell options such as peepholes=True.
    Inputs: input (N, I) or (I,); hx: (h_0, c_0) each (N, H) or (H,) ((h_0, c_0, a_0) for
        fgr, a_0 (N, 3H)); zeros if None.
    Returns: (h_1, c_1) (fgr: (h_1, c_1, a_1)), shaped like hx.
    """

    _kind, _default_cell = "lstm", "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        cell: str | CellSpec = "lstm",
        truncate: bool | None = None,
        **cell_options,
    ):
        super().__init__(input_size, hidden_size, bias, device, dtype, cell, truncate, cell_options)

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
        return self._step(input, hx)


class GRUCell(_Cell):
    r"""torch.nn.GRUCell (cell="gru").

    Args: input_size, hidden_size, bias=True, device=None, dtype=None, as torch.
    Inputs: input (N, I) or (I,); hx (N, H) or (H,), zeros if None. Returns: h_1 like hx.
    """

    _kind, _default_cell = "gru", "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        cell: str | CellSpec = "gru",
        **cell_options,
    ):
        super().__init__(input_size, hidden_size, bias, device, dtype, cell, None, cell_options)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        return self._step(input, hx)[0]


class RNNCell(_Cell):
    r"""torch.nn.RNNCell: h_1 = nonlinearity(W_ih x + b_ih + W_hh h_0 + b_hh).

    Args: input_size, hidden_size, bias=True, nonlinearity="tanh" ("tanh" or "relu"),
        device=None, dtype=None, as torch; keyword-only: cell, any plain-RNN cell (e.g.
        "rnn-sigmoid"; nonlinearity then follows the cell).
    Inputs: input (N, I) or (I,); hx (N, H) or (H,), zeros if None. Returns: h_1 like hx.
    """

    _kind, _default_cell = "rnn", "rnn-tanh"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
        *,
        cell: str | CellSpec | None = None,
        **cell_options,
    ):
        if cell is None:
            if nonlinearity not in ("tanh", "relu"):
                raise ArgumentError(
                    f"nonlinearity={nonlinearity!r} is invalid: Unknown nonlinearity: "
                    f"{nonlinearity}; allowed: 'tanh' or 'relu'"
                )
            cell = f"rnn-{nonlinearity}"
        super().__init__(input_size, hidden_size, bias, device, dtype, cell, None, cell_options)
        if nonlinearity not in ("tanh", self.spec.activation):
            raise ArgumentError(
                f"nonlinearity={nonlinearity!r} contradicts cell={self.spec.name!r}, whose "
                f"nonlinearity is {self.spec.activation!r}; give one of them"
            )
        self.nonlinearity = self.spec.activation

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        return self._step(input, hx)[0]


class RecurrentCell(_Cell):
    r"""One step of any cell of the family: `lstmlab.Recurrent`'s single-step counterpart,
    for the cells torch has no class for (slstm, minlstm, mingru), and the others too.

    Args: input_size, hidden_size, bias=True, device=None, dtype=None; keyword-only: cell
        (default "lstm"), truncate (lstm cells) and cell options (heads=..., ...).
    Inputs: input (N, I) or (I,); hx: the state in spec.state_names order, h_0 for one-state
        cells (rnn-*, gru, minlstm, mingru), else a tuple ((h_0, c_0, n_0, m_0) for slstm),
        each (N, H) or (H,) (fgr's a_0 3H wide); the default state (zeros, slstm's
        m_0 = -inf) if None.
    Returns: the new state like hx: h_1, or the tuple.
    """

    _default_cell = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        cell: str | CellSpec = "lstm",
        truncate: bool | None = None,
        **cell_options,
    ):
        super().__init__(input_size, hidden_size, bias, device, dtype, cell, truncate, cell_options)

    def forward(self, input: torch.Tensor, hx=None):
        new = self._step(input, hx)
        return new[0] if len(new) == 1 else new
