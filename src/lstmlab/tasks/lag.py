"""Noise-free long time lag (Hochreiter & Schmidhuber 1997, experiment 2a).

p + 1 symbols, one-hot: a_1 .. a_{p-1} are indices 0 .. p-2, x is p - 1, y is p. Two
training sequences, each with probability 0.5: (y, a_1, ..., a_{p-1}, y) and
(x, a_1, ..., a_{p-1}, x). The net reads one symbol a step and predicts the next at
every step, so a sequence of p + 1 symbols gives p input steps (the last symbol is only
a target); predicting it needs the first symbol, p - 1 steps back.

Success: the largest absolute output error (every output unit, every step) is below 0.25
for 10,000 consecutive training sequences (the paper capped runs at 5 million).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import H97, Batch, Judgement, Published, Task, check_int, max_abs_error, one_hot
from .rules import WindowRule


def next_symbol_batch(symbols: torch.Tensor, k: int) -> Batch:
    """Sequences of symbols (n, L) -> inputs symbols[:, :-1], targets symbols[:, 1:],
    one-hot over k, a target at every step."""
    n, L = symbols.shape
    lengths = torch.full((n,), L - 1, dtype=torch.long)
    mask = torch.ones(n, L - 1, dtype=torch.bool)
    return Batch(one_hot(symbols[:, :-1], k), one_hot(symbols[:, 1:], k), lengths, mask)


def first_symbols(n: int, p: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) x (index p - 1) or y (index p), each with probability 0.5."""
    return p - 1 + torch.randint(0, 2, (n,), generator=generator)


@dataclass(frozen=True)
class Lag(Task):
    """p: the number of symbols minus one (p >= 2); the sequence has p + 1 symbols."""

    p: int = 100

    name: ClassVar[str] = "lag"
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "every"
    test_size: ClassVar[int] = 10_000
    published: ClassVar[tuple[Published, ...]] = (
        Published(H97, {"p": 100}, "LSTM", 5_040, note="100% of trials; RTRL and BPTT 0% after 5M"),
    )

    def __post_init__(self):
        check_int("p", self.p, 2)

    @property
    def input_size(self) -> int:
        return self.p + 1

    @property
    def output_size(self) -> int:
        return self.p + 1

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        first = first_symbols(n, self.p, generator).unsqueeze(1)
        middle = torch.arange(self.p - 1).expand(n, -1)
        return next_symbol_batch(torch.cat([first, middle, first], 1), self.p + 1)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: max |y - t| over all outputs and steps < 0.25. Error: that maximum."""
        e = max_abs_error(self, outputs, batch)
        return Judgement(e < 0.25, e)

    def stopping_rule(self) -> WindowRule:
        return WindowRule(10_000)


TASK = Lag
