"""The 1997 machine's fast engine: net1997.h (C++, float64, batch 1) behind the interface of
lstmlab.train.net1997.ReferenceEngine, computing the truncated gradient forward in time
with the paper's eligibility traces. Built on first use by lstmlab.backends.csrc.load_net1997
(once, ~15-30 s, into the same cache as the cpu backend); tests/test_net1997.py checks it
against the reference."""

from __future__ import annotations

import math

import numpy as np

from ..backends import csrc
from ..cells import ACTIVATIONS

_module = None


def engine_module():
    """The compiled module (built if needed). Raises csrc.BuildError with the reason."""
    global _module
    if _module is None:
        _module = csrc.load_net1997()
    return _module


class CppEngine:
    name = "cpp"

    def __init__(self, net, w_hid: np.ndarray, w_out: np.ndarray):
        self.net = net
        config = [
            net.inputs,
            net.outputs,
            net.blocks,
            net.cells_per_block,
            net.hidden_units,
            int(net.input_gate),
            int(net.forget_gate),
            int(net.output_gate),
            int("cells" in net.recurrent_from),
            int("gates" in net.recurrent_from),
            int("hidden" in net.recurrent_from),
            ACTIVATIONS[net.cell_input].code,
            ACTIVATIONS[net.cell_output].code,
            ACTIVATIONS[net.output_activation].code,
        ]
        m_hid, m_out = net.masks()
        self._e = engine_module().Engine(config, w_hid, w_out, m_hid, m_out)

    @property
    def connected(self) -> bool:
        return self._e.connected

    @connected.setter
    def connected(self, on: bool):
        self._e.connected = on

    def reset(self):
        self._e.reset()

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        return self._e.get_weights()

    def set(self, w_hid: np.ndarray, w_out: np.ndarray):
        self._e.set_weights(w_hid, w_out)

    def sequences(self, xs, lengths, targets, lr, learn, want_outputs, each_step=False):
        return self._e.sequences(xs, lengths, targets, lr, learn, want_outputs, each_step)

    def gradient(self, x, targets):
        return self._e.gradient(x, targets)

    def stream(self, x, targets, lr, stop_error, update, learn):
        stop = math.nan if stop_error is None else float(stop_error)
        outputs, states, steps = self._e.stream(x, targets, lr, stop, update == "step", learn)
        return np.array(outputs), np.array(states), int(steps)
