"""Gers, Schmidhuber & Cummins 2000, "Learning to forget": the continual embedded Reber
grammar on the paper's machine, LSTM without forget gates against LSTM with forget gates
(with and without learning-rate decay), and the evidence of why.

The task: embedded Reber strings concatenated into one stream with no reset; at every
symbol the net predicts the symbols the grammar allows next (targets multi-hot over the 7
symbols, as `lstmlab.tasks.cerg`); a prediction is correct when every output's squared
error is below 0.49.

The net (the paper's section 3, as quoted in our reading of it): 7 input units fully
connected to a hidden layer of 4 memory blocks of 2 cells (8 cells, 12 gates with forget
gates); the cell outputs feed the cell inputs, all gates and the 7 output units; the output
units also see the input units ("shortcut" connections); all gates and the output units
are biased, the cell inputs not: 424 weights with forget gates (360 without). Input- and
output-gate biases -0.5, -1.0, -1.5, -2.0 by block, forget-gate biases +0.5, +1.0, +1.5,
+2.0; every other weight U(-0.2, 0.2). g in [-2, 2], h in [-1, 1], sigmoid outputs. The
truncated gradient (error flows back only along the cell states), a weight update after
every symbol, learning rate 0.5 at the start of each training stream; with "decay" it is
multiplied by 0.99 after every symbol of the stream.

The protocol: a training stream runs until the net's first wrong prediction or 10^6
symbols; after each training stream, 10 test streams; a net is a perfect solution when all
10 test streams of 100,000 symbols are predicted without an error (the paper: 0% of its
nets without forget gates, 18% with, 62% with decay; at most 30,000 training streams).

Readings: every stream (training or test) starts from the zero state (the net is reset
between streams, never inside one); the 10 test streams are the same for every test of a
trial (drawn from the trial's seed); training stops at the first perfect test. The decayed
learning rate is exact per symbol for the first 2,000 symbols of a stream and held for
blocks of 1,000 symbols after that, where it is below 0.5 * 0.99^2000 (1e-9).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..bench import machine_label
from ..errors import ArgumentError
from ..io import atomic_write
from ..tasks.reber import SYMBOLS, Coins, embedded_string
from .net1997 import BlockNet, Init1997, Machine1997
from .reproduce import budget_choice

ARMS = ("no-forget", "forget", "forget-decay")
PUBLISHED = {"no-forget": 0.0, "forget": 0.18, "forget-decay": 0.62}  # fraction of perfect nets
LR, DECAY = 0.5, 0.99
STOP_ERROR = 0.49
MAX_STREAM = 1_000_000  # symbols of one training stream
TEST_STREAMS, TEST_LENGTH = 10, 100_000
PAPER_STREAMS = 30_000  # the most training streams a run of the paper had
EXACT_DECAY = 2_000  # symbols of a stream with the decayed rate applied step by step
CHUNK = 1_000
DEFAULT_STREAMS = 2_000
K = len(SYMBOLS)


def gers_net(forget_gate: bool) -> BlockNet:
    """The paper's net: 4 blocks of 2 cells, 7 inputs and outputs (424 weights with forget gates)."""
    return BlockNet(
        inputs=K,
        outputs=K,
        blocks=4,
        cells_per_block=2,
        forget_gate=forget_gate,
        recurrent_from=("cells",),
        output_from_inputs=True,
        cell_bias=False,
        gate_bias=True,
        output_bias=True,
    )


def gers_init(forget_gate: bool) -> Init1997:
    return Init1997(
        weight_range=0.2,
        input_gate_bias=(-0.5, -1.0, -1.5, -2.0),
        output_gate_bias=(-0.5, -1.0, -1.5, -2.0),
        forget_gate_bias=(0.5, 1.0, 1.5, 2.0) if forget_gate else (),
    )


def gers_machine(arm: str, seed: int, fast: bool | None = None) -> Machine1997:
    if arm not in ARMS:
        raise ArgumentError(f"arm={arm!r} is invalid; allowed: {', '.join(map(repr, ARMS))}")
    forget = arm != "no-forget"
    return Machine1997(gers_net(forget), gers_init(forget), seed * 1000 + 3, fast=fast)


class ReberStream:
    """An endless continual embedded Reber stream drawn from a torch.Generator.

    take(n) -> (x (n, 7), targets (n, 7)) float64: x[t] the one-hot symbol t, targets[t]
    the symbols allowed after it (multi-hot; after a string's final E the next B).
    restart(): drop what is buffered, so the next symbol is the B of a fresh string."""

    def __init__(self, generator: torch.Generator):
        self.coin = Coins(generator)
        self.x: list[int] = []
        self.legal: list[int] = []  # the allowed next symbols as bits over SYMBOLS

    def _fill(self, n: int) -> None:
        while len(self.x) < n:
            s, ok = embedded_string(self.coin)
            self.x += [SYMBOLS.index(c) for c in s]
            self.legal += [_code(a) for a in ok[:-1]] + [_code("B")]

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        self._fill(n)
        x = np.eye(K)[self.x[:n]]
        t = ((np.asarray(self.legal[:n])[:, None] >> np.arange(K)) & 1).astype(np.float64)
        del self.x[:n], self.legal[:n]
        return x, t

    def restart(self) -> None:
        self.x, self.legal = [], []


def _code(symbols: str) -> int:
    return sum(1 << SYMBOLS.index(c) for c in symbols)


def wrong(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(T,) bool: some output's squared error >= 0.49 at that step."""
    return ((outputs - targets) ** 2 >= STOP_ERROR).any(-1)


def run_stream(
    machine: Machine1997,
    source: ReberStream,
    max_symbols: int,
    lr: float = LR,
    decay: float | None = None,
    learn: bool = True,
) -> tuple[int, bool]:
    """One stream from the zero state and a fresh string until the first wrong prediction
    or max_symbols. Returns (symbols run, whether it ended with an error); the error's
    symbol is counted and (learning) its update made, as the paper's online learner would.
    Symbols are drawn in growing blocks (16, 32, ... CHUNK), so a short stream is cheap."""
    machine.reset()
    source.restart()
    done, block = 0, 16
    while done < max_symbols:
        exact = decay is not None and done < EXACT_DECAY
        n = 1 if exact else min(block, max_symbols - done)
        block = min(2 * block, CHUNK)
        x, t = source.take(n)
        rate = lr * decay**done if decay is not None else lr
        outputs, _, steps = machine.stream(x, t, rate if learn else 0.0, stop_error=STOP_ERROR, learn=learn)
        done += int(steps)
        if wrong(np.asarray(outputs)[-1:], t[int(steps) - 1 : int(steps)]).any():
            return done, True
    return done, False


def test_streams(seed: int, streams: int = TEST_STREAMS) -> list[torch.Generator]:
    """The generators of a trial's test streams (the same ones at every test)."""
    return [torch.Generator().manual_seed(seed * 1000 + 100 + i) for i in range(streams)]


def perfect_test(machine: Machine1997, sources: list[ReberStream], length: int = TEST_LENGTH) -> tuple[bool, list[int]]:
    """Run each test stream (no learning) until its first error or `length` symbols.
    Returns (perfect: every stream ran `length` symbols without an error, the symbols
    predicted correctly in each)."""
    correct = []
    for source in sources:
        run, erred = run_stream(machine, source, length, learn=False)
        correct.append(run - 1 if erred else run)
    return all(c == length for c in correct), correct


def run_gers_trial(
    arm: str,
    seed: int,
    max_streams: int | str | None = None,
    max_seconds: float | None = None,
    test_length: int = TEST_LENGTH,
) -> dict:
    """One net of one arm: training streams (each to its first error or 10^6 symbols), a
    test after each, until a perfect test or the budget. Returns a JSON-serialisable dict:
    arm, seed, perfect, streams (training streams run), symbols (training symbols), the
    last test's correct symbols per stream and their mean, good (mean > 1,000, the paper's
    "good solution"), budget, wall_seconds, backend, machine, paper_fraction.
    max_streams: None / "default" (DEFAULT_STREAMS), "paper" (30,000) or an int."""
    choice = budget_choice("max_streams", max_streams)
    budget = {"default": DEFAULT_STREAMS, "paper": PAPER_STREAMS}.get(choice, choice)
    start, cpu_start = time.perf_counter(), time.process_time()
    machine = gers_machine(arm, seed)
    train = ReberStream(torch.Generator().manual_seed(seed * 1000))
    decay = DECAY if arm == "forget-decay" else None
    streams = symbols = 0
    perfect, correct = False, []
    while streams < budget and not perfect:
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        run, _ = run_stream(machine, train, MAX_STREAM, decay=decay)
        streams, symbols = streams + 1, symbols + run
        perfect, correct = perfect_test(machine, [ReberStream(g) for g in test_streams(seed)], test_length)
    mean = float(np.mean(correct)) if correct else None
    return {
        "arm": arm,
        "seed": seed,
        "perfect": perfect,
        "streams": streams,
        "symbols": symbols,
        "test_correct": correct,
        "test_mean_correct": mean,
        "good": mean is not None and mean > 1000,
        "budget": budget,
        "test_length": test_length,
        "weights": machine.num_weights,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "backend": f"Machine1997 {machine.backend}",
        "machine": machine_label(),
        "paper_fraction": PUBLISHED[arm],
    }


@dataclass(frozen=True)
class Traces:
    """Cell states over one stream: states[arm] (T, 8); symbols (T,) the input indices."""

    symbols: np.ndarray
    states: dict


def cell_state_traces(length: int = 5_000, seed: int = 0, train_streams: int = 0, fast: bool | None = None) -> Traces:
    """The cell states of the net without and with forget gates over one continual stream
    of `length` symbols (no learning on it), after `train_streams` training streams each
    (0: the initial weights). Without forget gates nothing pulls a cell state back, so it
    drifts with the stream; with them it is multiplied by the forget gate at every step."""
    states = {}
    x = t = None
    for arm in ("no-forget", "forget"):
        machine = gers_machine(arm, seed, fast=fast)
        train = ReberStream(torch.Generator().manual_seed(seed * 1000))
        for _ in range(train_streams):
            run_stream(machine, train, MAX_STREAM)
        if x is None:
            x, t = ReberStream(torch.Generator().manual_seed(seed * 1000 + 99)).take(length)
        machine.reset()
        _, s, _ = machine.stream(x, t, 0.0, learn=False)
        states[arm] = np.asarray(s)
    return Traces(x.argmax(-1), states)


def plot_cell_states(traces: Traces, path) -> None:
    """Both nets' cell states against the symbol index, one panel each (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    titles = {"no-forget": "LSTM without forget gates", "forget": "LSTM with forget gates"}
    for ax, (arm, s) in zip(axes, traces.states.items()):
        ax.plot(s, lw=0.8)
        ax.set_title(titles[arm])
        ax.set_ylabel("cell state s_c")
        ax.axhline(0.0, color="k", lw=0.5)
    axes[-1].set_xlabel("symbol of the continual embedded Reber stream")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


__all__ = [
    "ARMS",
    "PUBLISHED",
    "ReberStream",
    "Traces",
    "cell_state_traces",
    "gers_machine",
    "gers_net",
    "perfect_test",
    "plot_cell_states",
    "run_gers_trial",
    "run_stream",
    "wrong",
]
