"""Gers, Schmidhuber & Cummins 2000 on Machine1997: the net, the continual stream protocol,
the perfect-solution test and the cell-state evidence."""

import json

import numpy as np
import pytest
import torch

from lstmlab.errors import ArgumentError
from lstmlab.tasks.reber import INNER, SYMBOLS
from lstmlab.train.gers2000 import (
    ReberStream,
    cell_state_traces,
    gers_machine,
    gers_net,
    perfect_test,
    plot_cell_states,
    run_gers_trial,
    run_stream,
    wrong,
)


def test_the_papers_net():
    # 8 cells x (7 + 8) + 12 gates x (7 + 8 + 1) + 7 outputs x (8 + 7 + 1) = 424 (the paper's count);
    # without forget gates 4 gates x 16 fewer
    assert gers_net(True).num_weights() == 424
    assert gers_net(False).num_weights() == 424 - 4 * 16


def test_the_stream_follows_the_grammar_and_is_chunk_free():
    x, t = ReberStream(torch.Generator().manual_seed(0)).take(3000)
    nxt = x[1:].argmax(-1)
    assert (t[np.arange(2999), nxt] == 1).all()  # every next symbol is one the targets allow
    assert (x.sum(-1) == 1).all() and (t.sum(-1) >= 1).all()
    inner = {s for opts in INNER.values() for s, _ in opts}
    assert set(SYMBOLS[i] for i in x.argmax(-1)) == inner | {"B", "E"}
    source = ReberStream(torch.Generator().manual_seed(0))
    parts = [source.take(n) for n in (1, 999, 2000)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), t)


class Fixed:
    """A hand-made stream: the given rows, then more of the same."""

    def __init__(self, x, t):
        self.x, self.t, self.at = x, t, 0

    def take(self, n):
        idx = (self.at + np.arange(n)) % len(self.x)
        self.at += n
        return self.x[idx], self.t[idx]

    def restart(self):
        self.at = 0


def _hand_made(n=40):
    x, t = np.zeros((n, 7)), np.zeros((n, 7))
    x[np.arange(n), np.arange(n) % 7] = 1.0
    t[np.arange(n), (np.arange(n) + 1) % 7] = 1.0
    t[17, 6] = 1.0  # symbol 6 is allowed at steps 5, 12, 17, 19, ...
    return x, t


def _with_output_bias(machine, bias: np.ndarray):
    """All weights zero except the output biases: outputs sigmoid(bias), whatever the input."""
    m_hid, m_out = (m.astype(bool) for m in machine.net.masks())
    w_out = np.zeros(m_out.shape)
    w_out[:, -1] = bias
    machine.set_weights(np.concatenate([np.zeros(m_hid.sum()), w_out[m_out]]))


def test_the_perfect_test_on_a_hand_made_stream():
    machine = gers_machine("forget", 0, fast=False)
    x, t = _hand_made()
    _with_output_bias(machine, np.zeros(7))  # every output 0.5: (0.5 - t)^2 = 0.25 < 0.49, never wrong
    assert perfect_test(machine, [Fixed(x, t), Fixed(x, t)], length=60) == (True, [60, 60])
    bias = np.zeros(7)
    bias[6] = -3.0  # output 6 at sigmoid(-3) = 0.047: wrong, (0.953)^2 >= 0.49, where symbol 6 is allowed
    _with_output_bias(machine, bias)
    first = int(np.flatnonzero(t[:, 6])[0])
    assert wrong(np.tile(1 / (1 + np.exp(-bias)), (len(t), 1)), t).argmax() == first
    assert perfect_test(machine, [Fixed(x, t)], length=60) == (False, [first])


def test_a_training_stream_stops_at_its_first_error():
    source_seed = 5
    machine = gers_machine("forget", 1, fast=False)
    run, erred = run_stream(machine, ReberStream(torch.Generator().manual_seed(source_seed)), 400)
    # the reference: the twin net fed one symbol at a time, each judged before its own update
    twin = gers_machine("forget", 1, fast=False)
    twin.reset()
    source = ReberStream(torch.Generator().manual_seed(source_seed))
    step, erred_twin = 0, False
    while step < 400 and not erred_twin:
        x, t = source.take(1)
        y, _, _ = twin.stream(x, t, 0.5)
        step, erred_twin = step + 1, bool(wrong(np.asarray(y), t).any())
    assert erred and erred_twin and run == step
    np.testing.assert_array_equal(machine.get_weights(), twin.get_weights())


def test_cell_states_grow_without_forget_gates_and_stay_bounded_with_them():
    traces = cell_state_traces(length=1500, seed=0, fast=False)
    grow, keep = np.abs(traces.states["no-forget"]), np.abs(traces.states["forget"])
    assert grow.shape == keep.shape == (1500, 8)
    # without a forget gate s_t = s_{t-1} + i g: the states drift with the stream
    assert grow[-100:].max() > 5 * grow[:100].max()
    # with one, s_t = f s_{t-1} + i g with f < 1: |s| <= max|i g| / (1 - max f), no drift
    assert keep[-750:].max() < 1.5 * keep[:750].max()


def test_the_cell_state_plot_is_written(tmp_path):
    traces = cell_state_traces(length=50, seed=0, fast=False)
    path = tmp_path / "cells.png"
    plot_cell_states(traces, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_gers_trial_is_well_formed_and_deterministic():
    first = run_gers_trial("forget-decay", 2, max_streams=2, test_length=50)
    again = run_gers_trial("forget-decay", 2, max_streams=2, test_length=50)
    json.dumps(first)
    drop = lambda d: {k: v for k, v in d.items() if k not in ("wall_seconds", "cpu_seconds")}
    assert drop(first) == drop(again)
    assert first["streams"] == 2 and len(first["test_correct"]) == 10 and first["weights"] == 424
    assert first["paper_fraction"] == 0.62
    with pytest.raises(ArgumentError, match="arm='lstm'"):
        run_gers_trial("lstm", 0)
    with pytest.raises(ArgumentError, match="max_streams=0"):
        run_gers_trial("forget", 0, max_streams=0)
