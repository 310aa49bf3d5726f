"""`Recurrent`: any cell of the family behind torch.nn.LSTM / GRU / RNN's interface."""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .backends import backend_names, get_backend, run_layer
from .backends.reference import CellParams, zero_state
from .cells import CellSpec
from .errors import ArgumentError, InputError, InputTypeError
from .options import check_bool, check_int, check_number, resolve_spec

INITS = ("torch", "1997")
# torch.nn.RNNBase.mode for each kind of cell (plain RNNs: "RNN_" + the activation).
_MODES = {"lstm": "LSTM", "gru": "GRU", "slstm": "SLSTM", "minlstm": "MINLSTM", "mingru": "MINGRU"}
_DROPOUT_WARNING = (
    "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
    "expects num_layers greater than 1, but got dropout={} and num_layers={}"
)


class Recurrent(nn.Module):
    r"""A multi-layer recurrent network of any registered cell; a drop-in for
    torch.nn.LSTM (cell="lstm"), torch.nn.GRU (cell="gru") and torch.nn.RNN
    (cell="rnn-tanh" / "rnn-relu"): same arguments (positional ones in torch's order),
    shapes, parameter names, state_dict, attributes (mode, proj_size, all_weights,
    _flat_weights, ...) and exception types. lstmlab.LSTM / GRU / RNN are the same layer
    with torch's class names and defaults.

    For the LSTM family (see docs/cells.md; gates present depend on the cell):
        i_t = sigma(W_i x_t + b_ii + R_i h_{t-1} + b_hi [+ p_i * c_{t-1}])
        f_t = sigma(W_f x_t + b_if + R_f h_{t-1} + b_hf [+ p_f * c_{t-1}])
        g_t = G(W_g x_t + b_ig + R_g h_{t-1} + b_hg)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigma(W_o x_t + b_io + R_o h_{t-1} + b_ho [+ p_o * c_t])
        h_t = o_t * Hs(c_t)                     [h_t = W_hr (o_t * Hs(c_t)) with proj_size]
    slstm (xLSTM), minlstm and mingru (Feng et al. 2024): docs/cells.md; their weights are
    named as torch's (minlstm / mingru have no weight_hh / bias_hh; slstm's weight_hh is
    (4H, H // heads), block-diagonal over heads).

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        proj_size, device, dtype: as torch.nn.LSTM, in its positional order. proj_size > 0
            (LSTM cells only, < hidden_size) adds weight_hr_l{k} (proj_size, hidden_size):
            h, the output and the next layer's input are proj_size wide; c stays H wide.
    Keyword-only (lstmlab's options):
        cell: a registry name (lstmlab.cell_names()) or a CellSpec. Default "lstm".
        backend: "auto" (fastest available), or a name from lstmlab.backends.
        truncate: the 1997 truncated gradient (error flows back in time only along c);
            None takes the cell's default (on for lstm1997 only). LSTM cells only.
        forget_bias: initial value of the forget-gate bias (put in bias_ih; bias_hh's
            forget slice is zeroed). Cells with a free forget gate only (also slstm, minlstm).
        input_bias: initial value of the input-gate bias, put in the same way. The 1997
            paper's remedy for internal state drift: a negative bias keeps the input gates
            nearly shut at first. Cells with an input gate only (also slstm, minlstm).
        init: "torch" (U(-1/sqrt(H), 1/sqrt(H)) for every parameter, torch's default) or
            "1997" (U(-0.1, 0.1) and negative output-gate biases, as the 1997 paper).
        return_cell_states: forward also returns every step's cell state of the last
            layer, shaped like the output but H wide. LSTM cells only.
        learn_init: learn the initial state (parameters initial_h, initial_c, ...),
            used when hx is None; slstm learns initial_h only (its m_0 = -inf makes the
            first step ignore c_0 and n_0; see CellSpec.learnable_states).
        **cell_options: change fields of the cell, e.g. peepholes=True (see CellSpec).

    Inputs: input, hx
        input: (L, N, H_in), (N, L, H_in) if batch_first, (L, H_in) unbatched, or a
            PackedSequence. L >= 1 (torch raises for L = 0 too); N may be 0.
        hx: the initial state: a tensor (D*num_layers, N, H) for rnn-* and gru; a tuple
            (h_0, c_0) for LSTM cells ((h_0, c_0, a_0) for fgr, a_0 the previous gate
            activations, (D*num_layers, N, 3H)); (h_0, c_0, n_0, m_0) for slstm; h_0 is
            P = proj_size wide when set. Zeros (slstm: m_0 = -inf; or the learned state) if None.
    Outputs: output, state[, cells]
        output: (L, N, D*P) (batch_first: (N, L, D*P)); a PackedSequence if input was.
            P is proj_size, or H without a projection.
        state: h_n, or the tuple (h_n, c_n[, a_n]) (slstm: (h_n, c_n, n_n, m_n)): h_n (D*num_layers, N, P), the others
            (D*num_layers, N, width*H).
        cells: only with return_cell_states, the last layer's c_t for every t.
    Raises:
        lstmlab.errors.ArgumentError (a ValueError and a TypeError) for a bad argument;
        InputError (a ValueError and a RuntimeError) for a bad input or hx, so that
        whatever torch.nn.LSTM raises in the same case catches ours.
    """

    _default_cell = "lstm"  # what extra_repr leaves out

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        cell: str | CellSpec = "lstm",
        backend: str = "auto",
        truncate: bool | None = None,
        forget_bias: float | None = None,
        input_bias: float | None = None,
        init: str = "torch",
        return_cell_states: bool = False,
        learn_init: bool = False,
        **cell_options,
    ):
        super().__init__()
        check_number("dropout", dropout, "a number in [0, 1]", lambda p: 0 <= p <= 1)
        if dropout > 0 and num_layers == 1:
            warnings.warn(_DROPOUT_WARNING.format(dropout, num_layers), stacklevel=2)
        check_int("input_size", input_size, 1)
        check_int("hidden_size", hidden_size, 1)
        if isinstance(num_layers, (str, CellSpec)):
            raise ArgumentError(
                f"num_layers={num_layers!r} is invalid; allowed: an int >= 1 "
                f"(the cell is keyword-only, as in torch's order: cell={num_layers!r})"
            )
        check_int("num_layers", num_layers, 1)
        for name, value in [
            ("bias", bias),
            ("batch_first", batch_first),
            ("bidirectional", bidirectional),
            ("return_cell_states", return_cell_states),
            ("learn_init", learn_init),
        ]:
            check_bool(name, value)
        if backend != "auto" and backend not in backend_names():
            raise ArgumentError(
                f"backend={backend!r} is not a backend; valid: 'auto', {', '.join(map(repr, backend_names()))}"
            )
        if init not in INITS:
            raise ArgumentError(f"init={init!r} is not an initialisation; valid: {INITS}")
        spec = resolve_spec(
            cell, hidden_size, proj_size, bias, truncate, forget_bias, input_bias, return_cell_states, cell_options
        )

        self.spec = spec
        self.mode = _MODES.get(spec.kind) or f"RNN_{spec.activation.upper()}"
        if spec.kind == "rnn":
            self.nonlinearity = spec.activation
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = float(dropout)
        self.proj_size = proj_size
        self.backend, self.init = backend, init
        self.truncate = spec.truncate if truncate is None else truncate
        self.forget_bias, self.input_bias = forget_bias, input_bias
        self.return_cell_states = return_cell_states
        self.num_directions = 2 if bidirectional else 1

        kw = {"device": device, "dtype": dtype}
        P = self._state_width("h")
        # The layout comes from the spec (CellSpec.param_shapes): torch's order within a
        # layer, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, then the peephole and
        # gate-to-gate weights of the cells that have them.
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for k in range(num_layers):
            layer_in = input_size if k == 0 else P * self.num_directions
            shapes = spec.param_shapes(layer_in, hidden_size, bias, proj_size)
            for sfx in self._suffixes():
                names = [f"{name}_l{k}{sfx}" for name in shapes]
                for name, shape in zip(names, shapes.values()):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        if learn_init:
            for s in spec.learnable_states:
                shape = (num_layers * self.num_directions, self._state_width(s))
                self.register_parameter(f"initial_{s}", nn.Parameter(torch.zeros(shape, **kw)))
        self._init_flat_weights()
        self.reset_parameters()

    def _state_width(self, name: str) -> int:
        """Width of one state tensor: h is proj_size wide with a projection."""
        if name == "h" and self.proj_size:
            return self.proj_size
        return self.spec.state_width(name) * self.hidden_size

    # ---- torch.nn.RNNBase's bookkeeping of the weights ---------------------------------
    def _init_flat_weights(self) -> None:
        self._flat_weights = [getattr(self, n, None) for n in self._flat_weights_names]

    def __setattr__(self, attr, value) -> None:
        # keep _flat_weights up to date when a weight is reassigned, as torch does
        if "_flat_weights" in self.__dict__ and attr in self._flat_weights_names:
            self._flat_weights[self._flat_weights_names.index(attr)] = value
        super().__setattr__(attr, value)

    def _apply(self, fn, recurse=True):
        ret = super()._apply(fn, recurse)
        self._init_flat_weights()  # .to(), .double(), ... replace the parameters
        return ret

    def _update_flat_weights(self) -> None:
        """Catch weights swapped behind __setattr__'s back (torch.func.functional_call)."""
        if any(w is not getattr(self, n, None) for w, n in zip(self._flat_weights, self._flat_weights_names)):
            self._init_flat_weights()

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters, one list per layer and direction (torch.nn.RNNBase.all_weights)."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def _suffixes(self):
        return ("", "_reverse")[: self.num_directions]

    # ---- initialisation ----------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        H = self.hidden_size
        bound = 1 / math.sqrt(H) if self.init == "torch" else 0.1
        for name, w in self.named_parameters():
            if name.startswith("initial_"):
                w.zero_()
            else:
                w.uniform_(-bound, bound)
        gates = self.spec.gates
        for k in range(self.num_layers):
            for sfx in self._suffixes():
                if not self.bias:
                    continue
                # bias_hh (absent for minlstm / mingru) gets 0 where bias_ih gets a value, so
                # that the sum is exact
                b_ih, b_hh = getattr(self, f"bias_ih_l{k}{sfx}"), getattr(self, f"bias_hh_l{k}{sfx}", None)
                values = [(g, v) for g, v in (("f", self.forget_bias), ("i", self.input_bias)) if v is not None]
                if self.init == "1997" and "o" in gates:
                    # The paper gives its few blocks' output gates biases -1, -2, -3, ... so
                    # that cells switch on one after another; with one cell a block we cycle
                    # units through -1..-4.
                    values.append(("o", -(1.0 + torch.arange(H, dtype=b_ih.dtype) % 4)))
                for gate, value in values:
                    j = gates.index(gate)
                    b_ih[j * H : (j + 1) * H] = value
                    if b_hh is not None:
                        b_hh[j * H : (j + 1) * H] = 0.0

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn.LSTM."""

    def cell_params(self, layer: int, direction: int = 0) -> CellParams:
        """The parameters of one layer and direction (views, not copies)."""
        sfx = self._suffixes()[direction]
        return CellParams(**{f.name: getattr(self, f"{f.name}_l{layer}{sfx}", None) for f in fields(CellParams)})

    # ---- forward -----------------------------------------------------------------------
    def forward(self, input, hx=None):
        return self.run(input, hx)

    def run(self, input, hx=None, *, probe=None):
        """forward(), optionally instrumented: with `probe`, the reference backend runs and
        calls probe(layer, direction, t, previous_state, new_state, trace) at every step
        (see lstmlab.backends.reference.run_layer). lstmlab.analysis is built on this."""
        self._update_flat_weights()
        x, lengths, batched = self._prepare_input(input)
        T, B, _ = x.shape
        states = self._initial_states(hx, B, batched, x)
        backend = get_backend(self.backend if probe is None else "reference", x.device.type)
        D = self.num_directions
        finals, layer_in, cells = [], x, None
        for k in range(self.num_layers):
            outs, layer_cells = [], []
            for d in range(D):
                kw = {} if probe is None else {"probe": functools.partial(probe, k, d)}
                out, final, c_seq = run_layer(
                    backend,
                    self.spec,
                    self.cell_params(k, d),
                    layer_in,
                    states[k * D + d],
                    lengths,
                    reverse=d == 1,
                    truncate=self.truncate,
                    return_cells=self.return_cell_states and k == self.num_layers - 1,
                    **kw,
                )
                outs.append(out)
                layer_cells.append(c_seq)
                finals.append(final)
            layer_in = torch.cat(outs, -1) if D > 1 else outs[0]
            if self.dropout and self.training and k < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
            if self.return_cell_states and k == self.num_layers - 1:
                cells = torch.cat(layer_cells, -1) if D > 1 else layer_cells[0]
        state = tuple(torch.stack([f[i] for f in finals]) for i in range(len(self.spec.state_names)))
        if not batched:
            state = tuple(s.squeeze(1) for s in state)
        output = self._format_output(layer_in, input, batched)
        state = state[0] if len(state) == 1 else state
        if self.return_cell_states:
            return output, state, self._format_output(cells, input, batched)
        return output, state

    def _prepare_input(self, input):
        """-> x (T, B, I) time-major, lengths (B,) or None, batched flag."""
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input)
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise InputTypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise InputError(
                    f"input has {input.dim()} dimensions (shape {tuple(input.shape)}); "
                    f"expected 3 (batched) or 2 (unbatched)"
                )
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            lengths = None
        w = self.weight_ih_l0
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):  # torch's condition
            raise InputError(f"input dtype {x.dtype} does not match the parameters' dtype {w.dtype}")
        if x.shape[-1] != self.input_size:
            shape = tuple((input.data if isinstance(input, PackedSequence) else input).shape)
            raise InputError(f"input has {x.shape[-1]} features (shape {shape}); expected input_size={self.input_size}")
        if x.shape[0] == 0:
            raise InputError(
                f"input has 0 time steps (shape {tuple(input.shape)}); expected at least 1, "
                f"as torch.nn.{self.mode.split('_')[0]} does"
            )
        if x.device != w.device:
            raise InputError(f"input is on {x.device} but the parameters are on {w.device}")
        return x, lengths, batched

    def _initial_states(self, hx, B, batched, x):
        """A list over (layer, direction) of state tuples: h (B, P), the others (B, width*H)."""
        spec = self.spec
        LD = self.num_layers * self.num_directions
        if hx is None:
            # the default state, with the learned initial states (learn_init) in their places
            z = zero_state(spec, B, self.hidden_size, x, self.proj_size)
            full = [
                learned.unsqueeze(1).expand(-1, B, -1)
                if (learned := getattr(self, f"initial_{s}", None)) is not None
                else t.unsqueeze(0).expand(LD, -1, -1)
                for s, t in zip(spec.state_names, z)
            ]
        else:
            names = [f"{s}_0" for s in spec.state_names]
            if len(names) == 1:
                if not isinstance(hx, torch.Tensor):
                    raise InputTypeError(f"hx must be a Tensor (h_0) for cell {spec.name!r}, got {type(hx).__name__}")
                hx = (hx,)
            elif not isinstance(hx, (tuple, list)) or len(hx) != len(names):
                raise InputTypeError(
                    f"hx must be a tuple ({', '.join(names)}) for cell {spec.name!r}, "
                    f"got {type(hx).__name__}{'' if not isinstance(hx, (tuple, list)) else f' of length {len(hx)}'}"
                )
            full = []
            for name, s, t in zip(names, spec.state_names, hx):
                W = self._state_width(s)
                want = (LD, B, W) if batched else (LD, W)
                if not isinstance(t, torch.Tensor):
                    raise InputTypeError(f"hx {name} must be a Tensor of shape {want}, got {type(t).__name__}")
                if tuple(t.shape) != want:
                    raise InputError(
                        f"hx {name} has shape {tuple(t.shape)}; expected {want} "
                        f"(num_layers*num_directions{', batch' if batched else ''}, {W})"
                    )
                if t.dtype != x.dtype or t.device != x.device:
                    raise InputError(
                        f"hx {name} is {t.dtype} on {t.device}; expected {x.dtype} on {x.device} like the input"
                    )
                full.append(t if batched else t.unsqueeze(1))
        return [tuple(f[i] for f in full) for i in range(LD)]

    def _format_output(self, out, input, batched):
        if isinstance(input, PackedSequence):
            bs, idx = input.batch_sizes, input.sorted_indices
            ordered = out if idx is None else out.index_select(1, idx.to(out.device))
            data = torch.cat([ordered[t, : int(n)] for t, n in enumerate(bs)])
            return PackedSequence(data, bs, input.sorted_indices, input.unsorted_indices)
        if not batched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.spec.name != self._default_cell:
            s += f", cell={self.spec.name!r}"
        for name, default in [
            ("proj_size", 0),
            ("num_layers", 1),
            ("bias", True),
            ("batch_first", False),
            ("dropout", 0.0),
            ("bidirectional", False),
            ("backend", "auto"),
        ]:
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        if self.truncate != self.spec.truncate:
            s += f", truncate={self.truncate}"
        return s
