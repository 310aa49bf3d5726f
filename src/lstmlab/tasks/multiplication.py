"""The multiplication problem (Hochreiter & Schmidhuber 1997, experiment 5).

As the adding problem (`lstmlab.tasks.adding`, same markers and lengths) but the values
are uniform in [0, 1] and the target is X1 * X2. The definition we follow (docs/tasks.md)
makes it the adding problem in all else, so a mark on the first pair contributes X = 0
here too (the product is then 0); a reading with the neutral element (X = 1) would be as
plausible but is not what that definition says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .adding import last_output_error, marked_pairs
from .base import H97, Batch, Judgement, Published, Task, check_int
from .rules import WindowRule


@dataclass(frozen=True)
class Multiplication(Task):
    """T: the minimum sequence length (>= 22). n_seq: training stops when fewer than
    n_seq of the last 2,000 sequences were wrong (the paper used 140 for T = 100)."""

    T: int = 100
    n_seq: int = 140

    name: ClassVar[str] = "multiplication"
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "last"
    input_size: ClassVar[int] = 2
    output_size: ClassVar[int] = 1
    test_size: ClassVar[int] = 2560
    published: ClassVar[tuple[Published, ...]] = (
        Published(H97, {"T": 100, "n_seq": 140}, "LSTM", 482_000, 139, 2560,
                  "test MSE 0.0223"),)

    def __post_init__(self):
        check_int("T", self.T, 22)
        check_int("n_seq", self.n_seq, 1, 2000)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return marked_pairs(n, self.T, 0.0, lambda x1, x2: x1 * x2, generator)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: |y - t| < 0.04 at the end. Error: (y - t)^2."""
        e = last_output_error(self, outputs, batch)
        return Judgement(e.abs() < 0.04, e.square())

    def stopping_rule(self) -> WindowRule:
        return WindowRule(2000, max_wrong=self.n_seq - 1, counts_window=True)


TASK = Multiplication
