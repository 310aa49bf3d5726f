"""The 1997 machine: Hochreiter & Schmidhuber's nets of memory blocks, trained as the paper
trained them, and Gers, Schmidhuber & Cummins' (2000) forget gate on a continual stream.

A net (`BlockNet`) has `blocks` memory blocks of `cells_per_block` cells; the cells of a
block share one input gate, one output gate and (Gers 2000) one forget gate. At step t
every unit of the hidden layer (cell inputs, gates, optional conventional hidden units)
sees the sources

    z_t = [x_t (I), 1 (bias), r_{t-1} (R)],   r = [cell outputs | gate activations | hidden units]

(which groups are in r: `recurrent_from`), and

    in_j = sigma(w_in_j . z),  phi_j = sigma(w_phi_j . z) (or 1),  out_j = sigma(w_out_j . z)
    s_c = phi_j s_c(t-1) + in_j g(w_c . z)         (the constant error carousel when phi = 1)
    y_c = out_j h(s_c)                              for every cell c of block j
    y_k = f(w_k . [y_c..., hidden..., x_t (if output_from_inputs), 1 (if output_bias)])

with E = 1/2 sum_k (target_k - y_k)^2 over the steps that have targets (NaN: none). The
gradient is the paper's truncated one: no error flows back through any t-1 source, only
along the cell states s. That is autograd with r_{t-1} detached, which is what the
reference engine computes (lstmlab.train.net1997_reference, `fast=False`); the fast engine (lstmlab.train.net1997_cpp,
C++) computes the same gradient forward in time with the paper's eligibility traces
d s_c / d w (O(weights) per step, nothing stored over time) and is tested against it.

Training is plain online gradient descent: one update per sequence (`train_sequences`) or
after every step (its update="step"), or one per step on a continual stream (`stream`),
lr as given, no momentum, no clipping.

Weights live in two matrices: W_hid (U, S), rows [cell inputs (C) | input gates (B) |
forget gates (B) | output gates (B) | hidden units (H)] (absent gates have no rows),
columns z_t; W_out (K, O), columns [cells (C) | hidden units (H) | inputs (I) | bias].
Connections the topology lacks (a bias the net has not, inputs the outputs do not see) are
masked: they stay zero and are not counted in num_weights() or the flat weight vector.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from functools import cached_property
from numbers import Real

import numpy as np
import torch

from ..cells import ACTIVATIONS
from ..errors import ArgumentError
from .net1997_reference import ReferenceEngine, reference_step

RECURRENT_GROUPS = ("cells", "gates", "hidden")
OUTPUT_ACTIVATIONS = ("sigmoid", "identity", "tanh")


@dataclass(frozen=True)
class BlockNet:
    """The topology of a 1997 net.

    inputs I, outputs K, blocks B of cells_per_block cells (C = B * cells_per_block cells).
    hidden_units: conventional sigmoid hidden units (sources as the gates; output units see them).
    forget_gate: Gers 2000's one forget gate per block; input_gate / output_gate: present or fixed at 1.
    cell_input g / cell_output h: names in lstmlab.cells.ACTIVATIONS (1997: g1997, h1997).
    recurrent_from: which t-1 activations the hidden layer sees: "cells" (cell outputs),
        "gates" (gate activations), "hidden" (the conventional hidden units).
    output_from_inputs: the output units also see the input units directly.
    output_activation: "sigmoid" (the paper's), "identity" (linear) or "tanh".
    cell_bias / gate_bias / hidden_bias / output_bias: whether those units have a bias.
        The adding net ("all non-input units are biased") has all; the Reber nets (sec. 5.1:
        "the gate units are biased", "the output layer's only incoming connections originate
        at memory cells") have cell_bias=False and output_bias=False: 4 blocks x 1 cell ->
        12 hidden units x (7 inputs + 12 recurrent) + 8 gate biases + 7 x 4 = 264, and
        3 x 2 -> 12 x 19 + 6 + 7 x 6 = 276, the paper's counts.
    """

    inputs: int
    outputs: int
    blocks: int
    cells_per_block: int
    hidden_units: int = 0
    forget_gate: bool = False
    input_gate: bool = True
    output_gate: bool = True
    cell_input: str = "g1997"
    cell_output: str = "h1997"
    recurrent_from: tuple[str, ...] = ("cells", "gates")
    output_from_inputs: bool = False
    output_activation: str = "sigmoid"
    cell_bias: bool = True
    gate_bias: bool = True
    hidden_bias: bool = True
    output_bias: bool = True

    def __post_init__(self):
        for name in ("inputs", "outputs", "blocks", "cells_per_block"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ArgumentError(f"BlockNet: {name}={v!r} is not allowed; a positive int")
        if not isinstance(self.hidden_units, int) or isinstance(self.hidden_units, bool) or self.hidden_units < 0:
            raise ArgumentError(f"BlockNet: hidden_units={self.hidden_units!r} is not allowed; an int >= 0")
        for name in ("cell_input", "cell_output"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ArgumentError(
                    f"BlockNet: {name}={getattr(self, name)!r} is not allowed; one of {', '.join(ACTIVATIONS)}"
                )
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ArgumentError(
                f"BlockNet: output_activation={self.output_activation!r} is not allowed; "
                f"one of {', '.join(OUTPUT_ACTIVATIONS)}"
            )
        rec = tuple(self.recurrent_from)
        if len(set(rec)) != len(rec) or any(g not in RECURRENT_GROUPS for g in rec):
            raise ArgumentError(
                f"BlockNet: recurrent_from={self.recurrent_from!r} is not allowed; "
                f"distinct names from {RECURRENT_GROUPS}"
            )
        object.__setattr__(self, "recurrent_from", rec)

    # -- sizes --------------------------------------------------------------------------
    @property
    def cells(self) -> int:
        return self.blocks * self.cells_per_block

    @property
    def gate_kinds(self) -> tuple[str, ...]:
        """The gates each block has, in row order."""
        present = (("in", self.input_gate), ("forget", self.forget_gate), ("out", self.output_gate))
        return tuple(k for k, on in present if on)

    @property
    def units(self) -> int:
        """U: rows of W_hid (cell inputs, gates, hidden units)."""
        return self.cells + self.blocks * len(self.gate_kinds) + self.hidden_units

    @property
    def recurrent(self) -> int:
        """R: the t-1 sources."""
        size = {"cells": self.cells, "gates": self.blocks * len(self.gate_kinds), "hidden": self.hidden_units}
        return sum(size[g] for g in self.recurrent_from)

    @property
    def sources(self) -> int:
        """S = I + 1 + R: columns of W_hid."""
        return self.inputs + 1 + self.recurrent

    @property
    def output_sources(self) -> int:
        """O = C + H + I + 1: columns of W_out (masked where the topology lacks them)."""
        return self.cells + self.hidden_units + self.inputs + 1

    def row(self, kind: str) -> int:
        """The first row of W_hid of a unit kind: "cell", "in", "forget", "out", "hidden"."""
        if kind == "cell":
            return 0
        if kind == "hidden":
            return self.cells + self.blocks * len(self.gate_kinds)
        return self.cells + self.blocks * self.gate_kinds.index(kind)

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(W_hid mask (U, S), W_out mask (K, O)): 1.0 where a weight exists, else 0.0."""
        m_hid = np.ones((self.units, self.sources))
        bias = self.inputs
        m_hid[: self.cells, bias] = float(self.cell_bias)
        m_hid[self.cells : self.row("hidden"), bias] = float(self.gate_bias)
        m_hid[self.row("hidden") :, bias] = float(self.hidden_bias)
        m_out = np.ones((self.outputs, self.output_sources))
        first_input = self.cells + self.hidden_units
        m_out[:, first_input : first_input + self.inputs] = float(self.output_from_inputs)
        m_out[:, -1] = float(self.output_bias)
        return m_hid, m_out

    def num_weights(self) -> int:
        """The paper's weight count (adding, 2 blocks x 2 cells, 2 inputs, 1 output: 93)."""
        m_hid, m_out = self.masks()
        return int(m_hid.sum() + m_out.sum())


@dataclass(frozen=True)
class Init1997:
    """The paper's initialisation: every weight U(-weight_range, weight_range), except the
    gate biases given per block (the paper's input gate biases -1, -2, ... ; () = from the
    range like the others)."""

    weight_range: float
    input_gate_bias: tuple[float, ...] = ()
    output_gate_bias: tuple[float, ...] = ()
    forget_gate_bias: tuple[float, ...] = ()

    def __post_init__(self):
        if not (isinstance(self.weight_range, Real) and self.weight_range >= 0):
            raise ArgumentError(f"Init1997: weight_range={self.weight_range!r} is not allowed; a number >= 0")
        for name in ("input_gate_bias", "output_gate_bias", "forget_gate_bias"):
            object.__setattr__(self, name, tuple(float(b) for b in getattr(self, name)))

    def weights(self, net: BlockNet, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(W_hid (U, S), W_out (K, O)) drawn from torch.Generator().manual_seed(seed); masked entries 0."""
        gen = torch.Generator().manual_seed(int(seed))
        r = float(self.weight_range)
        w_hid = ((torch.rand(net.units, net.sources, generator=gen, dtype=torch.float64) * 2 - 1) * r).numpy()
        w_out = ((torch.rand(net.outputs, net.output_sources, generator=gen, dtype=torch.float64) * 2 - 1) * r).numpy()
        given = {"in": self.input_gate_bias, "out": self.output_gate_bias, "forget": self.forget_gate_bias}
        for kind, biases in given.items():
            if not biases:
                continue
            if kind not in net.gate_kinds or len(biases) != net.blocks:
                raise ArgumentError(
                    f"Init1997: {kind} gate biases {biases!r} do not fit the net: it has "
                    f"{net.blocks if kind in net.gate_kinds else 0} {kind} gates"
                )
            w_hid[net.row(kind) : net.row(kind) + net.blocks, net.inputs] = biases
        m_hid, m_out = net.masks()
        return w_hid * m_hid, w_out * m_out


def _as_array(name, value, shape_hint: str) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float64))
    if a.ndim != shape_hint.count(",") + 1:
        raise ArgumentError(f"{name} has shape {a.shape}; expected {shape_hint}")
    return a


UPDATES = ("step", "end")


def fast_available() -> bool:
    """Whether Machine1997's C++ engine (lstmlab.train.net1997_cpp) is part of this tree."""
    return importlib.util.find_spec("lstmlab.train.net1997_cpp") is not None


class Machine1997:
    """A BlockNet with its weights, trained online as in the 1997 paper (or on a stream, Gers 2000).

    Args:
        net: the topology. init: the weight initialisation. seed: its generator's seed.
        fast: the C++ engine (lstmlab.train.net1997_cpp; raises its BuildError when it cannot
            be built); False: the autograd reference (slow; the specification); None: the
            C++ engine when this tree has it (fast_available()), else the reference.
    Attributes: backend ("cpp" or "reference"), num_weights.
    """

    def __init__(self, net: BlockNet, init: Init1997, seed: int, fast: bool | None = True):
        if not isinstance(net, BlockNet):
            raise ArgumentError(f"Machine1997: net={net!r} is not allowed; a BlockNet")
        if not isinstance(init, Init1997):
            raise ArgumentError(f"Machine1997: init={init!r} is not allowed; an Init1997")
        self.net, self.init, self.seed = net, init, int(seed)
        w_hid, w_out = init.weights(net, self.seed)
        if fast is None:
            fast = fast_available()
        if fast:
            from .net1997_cpp import CppEngine

            self._engine = CppEngine(net, w_hid, w_out)
        else:
            self._engine = ReferenceEngine(net, w_hid, w_out)
        self._masks = tuple(m.astype(bool) for m in net.masks())

    @property
    def backend(self) -> str:
        return self._engine.name

    @cached_property
    def num_weights(self) -> int:
        return self.net.num_weights()

    # -- data checks ----------------------------------------------------------------------
    def _batch(self, xs, lengths, targets=None):
        xs = _as_array("xs", xs, "(N, T, I)")
        N, T, I = xs.shape
        if I != self.net.inputs:
            raise ArgumentError(f"xs has {I} features; the net has inputs={self.net.inputs}")
        lengths = np.asarray(lengths.cpu() if torch.is_tensor(lengths) else lengths)
        if lengths.shape != (N,) or (lengths < 1).any() or (lengths > T).any():
            raise ArgumentError(f"lengths={lengths!r} is not allowed; (N,) = ({N},) ints in [1, {T}]")
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        if targets is None:
            return xs, lengths, np.full((N, T, self.net.outputs), np.nan)
        targets = _as_array("targets", targets, "(N, T, K)")
        if targets.shape != (N, T, self.net.outputs):
            raise ArgumentError(f"targets has shape {targets.shape}; expected {(N, T, self.net.outputs)}")
        return xs, lengths, targets

    @staticmethod
    def _lr(lr) -> float:
        if not isinstance(lr, Real) or lr < 0:
            raise ArgumentError(f"lr={lr!r} is not allowed; a number >= 0")
        return float(lr)

    # -- learning -------------------------------------------------------------------------
    def train_sequences(
        self, xs, lengths, targets, lr: float, return_outputs: bool = False, update: str = "sequence"
    ) -> dict:
        """Online training: for each sequence in order, state reset, forward, one update.

        Args: xs (N, T, I), lengths (N,), targets (N, T, K) with NaN where no target, lr.
            update: "sequence" (one update after each sequence) or "step" (one after every
                step with a target, the traces running on through the sequence: the same as
                reset() and stream(x, targets, lr) per sequence).
        Returns a dict of numpy arrays, each sequence measured BEFORE its own update (with
        update="step": each step before that step's update):
            max_abs_error (N,): max |target - y| over its target steps and outputs (0 if none);
            sq_error (N,): its loss E = 1/2 sum (target - y)^2;
            outputs (N, T, K) if return_outputs (NaN after a sequence's length).
        Resets the stream state.
        """
        if update not in ("sequence", "step"):
            raise ArgumentError(f"update={update!r} is not allowed; one of ('sequence', 'step')")
        xs, lengths, targets = self._batch(xs, lengths, targets)
        worst, sq, outputs = self._engine.sequences(
            xs, lengths, targets, self._lr(lr), True, return_outputs, each_step=update == "step"
        )
        result = {"max_abs_error": worst, "sq_error": sq}
        if return_outputs:
            result["outputs"] = outputs
        return result

    def predict(self, xs, lengths) -> np.ndarray:
        """Outputs (N, T, K) (NaN after each length), state reset per sequence, no learning."""
        xs, lengths, targets = self._batch(xs, lengths)
        return self._engine.sequences(xs, lengths, targets, 0.0, False, True)[2]

    def gradient(self, x, targets) -> np.ndarray:
        """dE/dw (num_weights,) of one sequence x (T, I), targets (T, K) from the zero state; no update."""
        xs, _, ts = self._batch(np.asarray(x)[None], [len(x)], np.asarray(targets)[None])
        g_hid, g_out = self._engine.gradient(xs[0], ts[0])
        return np.concatenate([g_hid[self._masks[0]], g_out[self._masks[1]]])

    def stream(self, x, targets, lr, stop_error: float | None = None, update: str = "step", learn: bool = True):
        """A continual stream: the state carries over from the previous call (until reset()).

        Args:
            x (T, I), targets (T, K) (NaN: no target).
            lr: the learning rate, or (T,) rates, one per step (update="step"; a decaying
                rate without a call per step).
            stop_error: stop after the first step where some output's squared error
                (target - y)^2 >= stop_error (that step's update is still made).
            update: "step" (Gers 2000: an update after every step) or "end" (one after the call).
            learn: False runs without updating (the traces still advance).
        Returns (outputs (steps_run, K), cell_states (steps_run, C), steps_run).
        """
        if update not in UPDATES:
            raise ArgumentError(f"update={update!r} is not allowed; one of {UPDATES}")
        if stop_error is not None and not isinstance(stop_error, Real):
            raise ArgumentError(f"stop_error={stop_error!r} is not allowed; a number or None")
        xs, _, ts = self._batch(np.asarray(x)[None], [len(x)], np.asarray(targets)[None])
        if isinstance(lr, Real):
            lr = self._lr(lr)
        else:
            lr = np.ascontiguousarray(lr.detach().cpu() if torch.is_tensor(lr) else lr, dtype=np.float64)
            if update != "step" or lr.shape != (len(xs[0]),) or not (lr >= 0).all():
                raise ArgumentError(
                    f"lr of shape {lr.shape} is not allowed; a number >= 0, or ({len(xs[0])},) rates >= 0 "
                    f"with update='step' (given update={update!r})"
                )
        return self._engine.stream(xs[0], ts[0], lr, stop_error, update, bool(learn))

    def reset(self):
        """Zero the cell states, the t-1 activations and the traces (a new stream)."""
        self._engine.reset()

    @property
    def connected(self) -> bool:
        """True (the default): the output units see the cells and hidden units. False: they
        see only the inputs (output_from_inputs) and their bias, and no error reaches the
        hidden layer (its weights stay as they are; its state still runs). The 1997 paper
        added its memory cells once the error of the direct weights stopped falling."""
        return self._engine.connected

    @connected.setter
    def connected(self, on: bool):
        self._engine.connected = bool(on)

    # -- weights --------------------------------------------------------------------------
    def weight_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (W_hid (U, S), W_out (K, O)), masked entries 0 (layout: module docstring)."""
        return self._engine.get()

    def get_weights(self) -> np.ndarray:
        """The weights as a flat float64 vector (num_weights,), for snapshot/rollback."""
        w_hid, w_out = self._engine.get()
        return np.concatenate([w_hid[self._masks[0]], w_out[self._masks[1]]])

    def set_weights(self, flat) -> None:
        """Set the weights from a get_weights() vector; the stream state is kept."""
        flat = np.asarray(flat, dtype=np.float64)
        if flat.shape != (self.num_weights,):
            raise ArgumentError(f"set_weights: a vector of shape {flat.shape}; expected ({self.num_weights},)")
        w_hid, w_out = (np.zeros(m.shape) for m in self._masks)
        n = int(self._masks[0].sum())
        w_hid[self._masks[0]], w_out[self._masks[1]] = flat[:n], flat[n:]
        self._engine.set(w_hid, w_out)

    def state_dict(self) -> dict:
        """{"net", "init", "seed", "weights" (a float64 tensor)}: enough to rebuild with load_state_dict."""
        return {
            "net": asdict(self.net),
            "init": asdict(self.init),
            "seed": self.seed,
            "weights": torch.from_numpy(self.get_weights()),
        }

    @classmethod
    def from_state_dict(cls, state: dict, fast: bool = True) -> Machine1997:
        """A machine with the configuration and weights of a state_dict() (stream state reset)."""
        net = dict(state["net"])
        net["recurrent_from"] = tuple(net["recurrent_from"])
        m = cls(BlockNet(**net), Init1997(**state["init"]), state["seed"], fast=fast)
        m.set_weights(state["weights"].numpy())
        return m


__all__ = ["BlockNet", "Init1997", "Machine1997", "ReferenceEngine", "reference_step"]
