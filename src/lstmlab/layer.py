"""`Recurrent`: any cell of the family behind torch.nn.LSTM / GRU / RNN's interface."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .backends import backend_names, get_backend, run_layer
from .backends.reference import CellParams, zero_state
from .cells import CellSpec, get_cell

INITS = ("torch", "1997")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= {minimum}")


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid; allowed: True or False")


class Recurrent(nn.Module):
    r"""A multi-layer recurrent network of any registered cell; a drop-in for
    torch.nn.LSTM (cell="lstm"), torch.nn.GRU (cell="gru") and torch.nn.RNN
    (cell="rnn-tanh" / "rnn-relu"): same arguments, shapes, parameter names, state_dict.

    For the LSTM family (see CELLS.md; gates present depend on the cell):
        i_t = sigma(W_i x_t + b_ii + R_i h_{t-1} + b_hi [+ p_i * c_{t-1}])
        f_t = sigma(W_f x_t + b_if + R_f h_{t-1} + b_hf [+ p_f * c_{t-1}])
        g_t = G(W_g x_t + b_ig + R_g h_{t-1} + b_hg)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigma(W_o x_t + b_io + R_o h_{t-1} + b_ho [+ p_o * c_t])
        h_t = o_t * Hs(c_t)

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        device, dtype: as torch.nn.LSTM.
        cell: a registry name (lstmlab.cell_names()) or a CellSpec.
        backend: "auto" (fastest available), or a name from lstmlab.backends.
        truncate: the 1997 truncated gradient (error flows back in time only along c);
            None takes the cell's default (on for lstm1997 only). LSTM cells only.
        forget_bias: initial value of the forget-gate bias (put in bias_ih; bias_hh's
            forget slice is zeroed). Cells with a free forget gate only.
        input_bias: initial value of the input-gate bias, put in the same way. The 1997
            paper's remedy for internal state drift: a negative bias keeps the input gates
            nearly shut at first. Cells with an input gate only.
        init: "torch" (U(-1/sqrt(H), 1/sqrt(H)) for every parameter, torch's default) or
            "1997" (U(-0.1, 0.1) and negative output-gate biases, as the 1997 paper).
        return_cell_states: forward also returns every step's cell state of the last
            layer, shaped like the output. LSTM cells only.
        learn_init: learn the initial state (parameters initial_h, initial_c, ...),
            used when hx is None.
        **cell_options: change fields of the cell, e.g. peepholes=True (see CellSpec).

    Inputs: input, hx
        input: (L, N, H_in), (N, L, H_in) if batch_first, (L, H_in) unbatched, or a
            PackedSequence.
        hx: the initial state: a tensor (D*num_layers, N, H) for rnn-* and gru; a tuple
            (h_0, c_0) for LSTM cells ((h_0, c_0, a_0) for fgr, a_0 the previous gate
            activations, (D*num_layers, N, 3H)). Zeros (or the learned state) if None.
    Outputs: output, state[, cells]
        output: (L, N, D*H) (batch_first: (N, L, D*H)); a PackedSequence if input was.
        state: h_n, or the tuple (h_n, c_n[, a_n]), each (D*num_layers, N, width*H).
        cells: only with return_cell_states, the last layer's c_t for every t.
    """

    def __init__(self, input_size: int, hidden_size: int, cell: str | CellSpec = "lstm",
                 num_layers: int = 1, bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None, *,
                 backend: str = "auto", truncate: bool | None = None,
                 forget_bias: float | None = None, input_bias: float | None = None, init: str = "torch",
                 return_cell_states: bool = False, learn_init: bool = False, **cell_options):
        super().__init__()
        _check_int("input_size", input_size, 1)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("num_layers", num_layers, 1)
        for name, value in [("bias", bias), ("batch_first", batch_first),
                            ("bidirectional", bidirectional),
                            ("return_cell_states", return_cell_states), ("learn_init", learn_init)]:
            _check_bool(name, value)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout={dropout!r} is invalid; allowed: a number in [0, 1]")
        if backend != "auto" and backend not in backend_names():
            raise ValueError(f"backend={backend!r} is not a backend; valid: 'auto', "
                             f"{', '.join(map(repr, backend_names()))}")
        if init not in INITS:
            raise ValueError(f"init={init!r} is not an initialisation; valid: {INITS}")
        spec = get_cell(cell).with_options(**cell_options)
        if spec.kind != "lstm":
            for name, value in [("truncate", truncate or None), ("forget_bias", forget_bias),
                                ("input_bias", input_bias), ("return_cell_states", return_cell_states or None)]:
                if value is not None:
                    raise ValueError(f"cell {spec.name!r} has no option {name!r} (given {value!r}); "
                                     f"it needs a cell state (an LSTM cell)")
        if truncate is not None:
            _check_bool("truncate", truncate)
        for name, value, gate, why in [
                ("forget_bias", forget_bias, spec.forget_gate == "free", f"its forget gate is {spec.forget_gate!r}"),
                ("input_bias", input_bias, spec.input_gate, "it has no input gate")]:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} is invalid; allowed: a finite number or None")
            if not gate:
                raise ValueError(f"cell {spec.name!r} has no option {name!r} (given {value!r}): {why}")
            if not bias:
                raise ValueError(f"{name}={value!r} needs bias=True")

        self.spec = spec
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = float(dropout)
        self.backend, self.init = backend, init
        self.truncate = spec.truncate if truncate is None else truncate
        self.forget_bias, self.input_bias = forget_bias, input_bias
        self.return_cell_states = return_cell_states
        self.num_directions = 2 if bidirectional else 1

        kw = {"device": device, "dtype": dtype}
        H, G = hidden_size, len(spec.gates)
        P, A = len(spec.peephole_gates), len(spec.recurrent_gates)
        for k in range(num_layers):
            layer_in = input_size if k == 0 else H * self.num_directions
            for sfx in self._suffixes():
                shapes = {"weight_ih": (G * H, layer_in), "weight_hh": (G * H, H)}
                if bias:
                    shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
                if P:
                    shapes["weight_ch"] = (P * H,)
                if A:
                    shapes["weight_gg"] = (A * H, A * H)
                for name, shape in shapes.items():
                    self.register_parameter(f"{name}_l{k}{sfx}", nn.Parameter(torch.empty(shape, **kw)))
        if learn_init:
            for s in spec.state_names:
                shape = (num_layers * self.num_directions, spec.state_width(s) * H)
                self.register_parameter(f"initial_{s}", nn.Parameter(torch.zeros(shape, **kw)))
        self.reset_parameters()

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
                b_ih, b_hh = getattr(self, f"bias_ih_l{k}{sfx}"), getattr(self, f"bias_hh_l{k}{sfx}")
                if self.init == "1997" and "o" in gates:
                    # The paper gives its few blocks' output gates biases -1, -2, -3, ... so
                    # that cells switch on one after another; with one cell a block we cycle
                    # units through -1..-4 (bias_hh's slice is zeroed so the sum is exact).
                    o = gates.index("o")
                    b_ih[o * H:(o + 1) * H] = -(1.0 + torch.arange(H, dtype=b_ih.dtype) % 4)
                    b_hh[o * H:(o + 1) * H] = 0.0
                for gate, value in (("f", self.forget_bias), ("i", self.input_bias)):
                    if value is not None:
                        j = gates.index(gate)
                        b_ih[j * H:(j + 1) * H] = value
                        b_hh[j * H:(j + 1) * H] = 0.0

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn.LSTM."""

    def cell_params(self, layer: int, direction: int = 0) -> CellParams:
        """The parameters of one layer and direction (views, not copies)."""
        sfx = self._suffixes()[direction]
        get = lambda n: getattr(self, f"{n}_l{layer}{sfx}", None)  # noqa: E731
        return CellParams(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                          get("weight_ch"), get("weight_gg"))

    # ---- forward -----------------------------------------------------------------------
    def forward(self, input, hx=None):
        return self.run(input, hx)

    def run(self, input, hx=None, *, probe=None):
        """forward(), optionally instrumented: with `probe`, the reference backend runs and
        calls probe(layer, direction, t, previous_state, new_state, trace) at every step
        (see lstmlab.backends.reference.run_layer). lstmlab.analysis is built on this."""
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
                    backend, self.spec, self.cell_params(k, d), layer_in, states[k * D + d], lengths,
                    reverse=d == 1, truncate=self.truncate,
                    return_cells=self.return_cell_states and k == self.num_layers - 1, **kw)
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
                raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"input has {input.dim()} dimensions (shape {tuple(input.shape)}); "
                                 f"expected 3 (batched) or 2 (unbatched)")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            lengths = None
        if x.shape[-1] != self.input_size:
            shape = tuple((input.data if isinstance(input, PackedSequence) else input).shape)
            raise ValueError(f"input has {x.shape[-1]} features (shape {shape}); "
                             f"expected input_size={self.input_size}")
        if x.shape[0] == 0:
            raise ValueError("input has 0 time steps; expected at least 1")
        w = self.weight_ih_l0
        if x.dtype != w.dtype:
            raise ValueError(f"input dtype {x.dtype} does not match the parameters' dtype {w.dtype}")
        if x.device != w.device:
            raise ValueError(f"input is on {x.device} but the parameters are on {w.device}")
        return x, lengths, batched

    def _initial_states(self, hx, B, batched, x):
        """A list over (layer, direction) of state tuples, each tensor (B, width*H)."""
        spec, H = self.spec, self.hidden_size
        LD = self.num_layers * self.num_directions
        if hx is None:
            if any(n.startswith("initial_") for n, _ in self.named_parameters()):
                full = [getattr(self, f"initial_{s}").unsqueeze(1).expand(-1, B, -1) for s in spec.state_names]
            else:
                z = zero_state(spec, B, H, x)
                full = [t.unsqueeze(0).expand(LD, -1, -1) for t in z]
        else:
            names = [f"{s}_0" for s in spec.state_names]
            if len(names) == 1:
                if not isinstance(hx, torch.Tensor):
                    raise ValueError(f"hx must be a Tensor (h_0) for cell {spec.name!r}, got {type(hx).__name__}")
                hx = (hx,)
            elif not isinstance(hx, (tuple, list)) or len(hx) != len(names):
                raise ValueError(f"hx must be a tuple ({', '.join(names)}) for cell {spec.name!r}, "
                                 f"got {type(hx).__name__}{'' if not isinstance(hx, (tuple, list)) else f' of length {len(hx)}'}")
            full = []
            for name, s, t in zip(names, spec.state_names, hx):
                W = spec.state_width(s) * H
                want = (LD, B, W) if batched else (LD, W)
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"hx {name} has shape {got}; expected {want} "
                                     f"(num_layers*num_directions{', batch' if batched else ''}, {W})")
                if t.dtype != x.dtype or t.device != x.device:
                    raise ValueError(f"hx {name} is {t.dtype} on {t.device}; expected {x.dtype} on {x.device} like the input")
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
        s = f"{self.input_size}, {self.hidden_size}, cell={self.spec.name!r}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in [("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("backend", "auto")]:
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        if self.truncate != self.spec.truncate:
            s += f", truncate={self.truncate}"
        return s
