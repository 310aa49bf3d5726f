"""The adding problem in the form of Le, Jaitly & Hinton 2015 (used by Arjovsky et al. 2016).

Each of T steps carries (value, marker): feature 0 the value, uniform in [0, 1]; feature
1 the marker, 1 at exactly two steps, one drawn uniformly from each half of the sequence
(positions [0, T/2) and [T/2, T)), 0 elsewhere. The target at the last step is the sum of
the two marked values, learned by a linear output with squared error. Predicting 1
always scores the baseline MSE 1/6 = 0.167.

The papers report MSE curves; there is no stopping rule. A sequence counts as correct
when |y - t| < 0.04 (the 1997 adding problem's criterion, borrowed); its error is (y - t)^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .adding import last_output_error
from .base import ARJOVSKY16, LE15, Batch, Judgement, Published, Task, check_int, last_step_mask, uniform_int
from .rules import StoppingRule


@dataclass(frozen=True)
class AddingLe(Task):
    """T: the sequence length (>= 2)."""

    T: int = 100

    name: ClassVar[str] = "adding-le"
    loss_kind: ClassVar[str] = "mse"
    target: ClassVar[str] = "last"
    input_size: ClassVar[int] = 2
    output_size: ClassVar[int] = 1
    test_size: ClassVar[int] = 1000
    baseline: ClassVar[float] = 1 / 6
    published: ClassVar[tuple[Published, ...]] = (
        Published(LE15, {}, "baseline (predict 1)", note="MSE 0.167"),
        Published(ARJOVSKY16, {"T": 400}, "LSTM, 128 units", note="beats the baseline up to T = 400"),
    )

    def __post_init__(self):
        check_int("T", self.T, 2)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        T, half = self.T, self.T // 2
        values = torch.rand(n, T, generator=generator)
        p1 = uniform_int(0, half - 1, n, generator)
        p2 = uniform_int(half, T - 1, n, generator)
        rows = torch.arange(n)
        marker = torch.zeros(n, T)
        marker[rows, p1] = 1.0
        marker[rows, p2] = 1.0
        lengths = torch.full((n,), T, dtype=torch.long)
        mask = last_step_mask(lengths, T)
        targets = torch.zeros(n, T, 1)
        targets[:, -1, 0] = values[rows, p1] + values[rows, p2]
        return Batch(torch.stack([values, marker], -1), targets, lengths, mask)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        e = last_output_error(self, outputs, batch)
        return Judgement(e.abs() < 0.04, e.square())

    def stopping_rule(self) -> StoppingRule:
        return StoppingRule()


TASK = AddingLe
