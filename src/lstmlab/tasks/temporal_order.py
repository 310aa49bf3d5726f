"""Temporal order (Hochreiter & Schmidhuber 1997, experiment 6a).

Eight symbols, one-hot, in the order of SYMBOLS. A sequence starts with E, ends with the
trigger B, and otherwise consists of distractors drawn uniformly from {a, b, c, d},
except at positions t1 in [10, 20] and t2 in [50, 60], which hold X or Y (each with
probability 0.5). Its length is uniform on [100, 110]. Class = the temporal order of the
relevant symbols: XX, XY, YX, YY -> 0, 1, 2, 3 (X = 0, Y = 1, read as a binary number,
first symbol most significant); the target at the last step is the one-hot class over
sigmoid output units trained with squared error.

A sequence is correct when every output's absolute error at the end is below 0.3.
Training stops when the mean training error is below 0.1 and the last 2,000 sequences
were all correct; the test set has 2,560 sequences.

Readings: positions are the paper's, counted from 1 (E is position 1), so t1 in [10, 20]
is input index 9 .. 19. "Mean training error" is the mean, over the last 2,000
sequences, of each sequence's mean squared error over its output units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import (
    H97,
    Batch,
    Judgement,
    Published,
    Task,
    last_step_mask,
    max_abs_error,
    mean_squared_error,
    one_hot,
    uniform_int,
)
from .rules import WindowRule

SYMBOLS = ("a", "b", "c", "d", "E", "B", "X", "Y")
E, B, X = SYMBOLS.index("E"), SYMBOLS.index("B"), SYMBOLS.index("X")


def temporal_order_batch(n: int, windows: tuple[tuple[int, int], ...], generator: torch.Generator) -> Batch:
    """Sequences with X/Y at one position drawn from each window (1-based, inclusive)."""
    lengths = uniform_int(100, 110, n, generator)
    T = int(lengths.max())
    rows = torch.arange(n)
    symbols = torch.randint(0, 4, (n, T), generator=generator)
    symbols[:, 0] = E
    symbols[rows, lengths - 1] = B
    label = torch.zeros(n, dtype=torch.long)
    for low, high in windows:
        where = uniform_int(low, high, n, generator) - 1
        bit = torch.randint(0, 2, (n,), generator=generator)
        symbols[rows, where] = X + bit
        label = 2 * label + bit
    inside = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    inputs = one_hot(symbols, len(SYMBOLS)) * inside.unsqueeze(-1)
    mask = last_step_mask(lengths, T)
    targets = torch.zeros(n, T, 2 ** len(windows))
    targets[rows, lengths - 1, label] = 1.0
    return Batch(inputs, targets, lengths, mask)


@dataclass(frozen=True)
class TemporalOrder(Task):
    """No parameters: the 1997 definition (lengths 100-110, two relevant symbols)."""

    name: ClassVar[str] = "temporal-order"
    windows: ClassVar[tuple[tuple[int, int], ...]] = ((10, 20), (50, 60))
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "last"
    input_size: ClassVar[int] = len(SYMBOLS)
    output_size: ClassVar[int] = 4
    test_size: ClassVar[int] = 2560
    published: ClassVar[tuple[Published, ...]] = (Published(H97, {}, "LSTM", 31_390, 1, 2560),)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return temporal_order_batch(n, self.windows, generator)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: every output's |y - t| < 0.3 at the end. Error: the mean (y - t)^2."""
        return Judgement(max_abs_error(self, outputs, batch) < 0.3, mean_squared_error(self, outputs, batch))

    def stopping_rule(self) -> WindowRule:
        return WindowRule(2000, max_wrong=0, max_mean_error=0.1, counts_window=True)


TASK = TemporalOrder
