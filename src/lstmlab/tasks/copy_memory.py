"""The copy-memory problem (Arjovsky, Shah & Bengio 2016).

Ten categories, one-hot: 0 blank, 1 .. 8 symbols, 9 the delimiter. A sequence of length
T + 20 is 10 symbols drawn uniformly from 1 .. 8, then T - 1 blanks, the delimiter, and
10 blanks. The target at every step is blank for the first T + 10 steps and then the 10
symbols, over 9 output classes (blank and the 8 symbols; the delimiter is never a target),
with cross-entropy. The memoryless baseline (blanks, then a uniform guess over the 8
symbols) scores 10 log 8 / (T + 20) per step.

A sequence counts as correct when every step's most probable class is its target; its
error is the mean cross-entropy per step. The paper reports learning curves, not a
stopping point, so there is no stopping rule; compare the test error with `baseline`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import ARJOVSKY16, Batch, Judgement, Published, Task, check_int, one_hot
from .rules import StoppingRule


def cross_entropy_judgement(outputs: torch.Tensor, batch: Batch) -> Judgement:
    """Correct: argmax = target at every target step. Error: mean cross-entropy per step."""
    m = batch.mask
    ce = F.cross_entropy(outputs.transpose(1, 2), batch.targets, reduction="none")  # (n, T)
    hit = (outputs.argmax(-1) == batch.targets) | ~m
    return Judgement(hit.all(1), (ce * m).sum(1) / m.sum(1))


@dataclass(frozen=True)
class Copy(Task):
    """T: the delay (>= 1); sequences have T + 20 steps."""

    T: int = 100

    name: ClassVar[str] = "copy"
    loss_kind: ClassVar[str] = "cross-entropy"
    target: ClassVar[str] = "every"
    input_size: ClassVar[int] = 10
    output_size: ClassVar[int] = 9
    test_size: ClassVar[int] = 1000
    published: ClassVar[tuple[Published, ...]] = tuple(
        Published(
            ARJOVSKY16,
            {"T": T},
            "memoryless baseline",
            note=f"cross-entropy {b} per step; LSTM (40 units) beats it only at T = 100; tanh RNN never",
        )
        for T, b in [(100, 0.1733), (200, 0.0945), (300, 0.0650), (500, 0.0400)]
    )

    def __post_init__(self):
        check_int("T", self.T, 1)

    @property
    def baseline(self) -> float:
        return 10 * math.log(8) / (self.T + 20)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        L = self.T + 20
        data = torch.randint(1, 9, (n, 10), generator=generator)
        symbols = torch.zeros(n, L, dtype=torch.long)
        symbols[:, :10] = data
        symbols[:, self.T + 9] = 9
        targets = torch.zeros(n, L, dtype=torch.long)
        targets[:, -10:] = data
        lengths = torch.full((n,), L, dtype=torch.long)
        mask = torch.ones(n, L, dtype=torch.bool)
        return Batch(one_hot(symbols, 10), targets, lengths, mask)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        return cross_entropy_judgement(outputs, batch)

    def stopping_rule(self) -> StoppingRule:
        return StoppingRule()


TASK = Copy
