"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4).

Each step carries a pair (value, marker): feature 0 the value, uniform in [-1, 1];
feature 1 the marker. Exactly two pairs are marked 1: first one of the first 10 pairs
(its value is X1), then one of the first T/2 - 1 pairs not yet marked (X2). Every other
marker is 0, except the first and the last pair's, which are -1. The length is uniform on
[T, T + T/10]. The target at the last step is 0.5 + (X1 + X2) / 4, in [0, 1], learned by
a sigmoid output unit with squared error.

Readings of the text (positions count from 0):
  * "the first T/2 - 1 pairs" are positions 0 .. T//2 - 2; T/10 is T // 10.
  * "In the rare case where the first pair of the sequence gets marked, we set X1 to zero"
    (section 5.4): X1 is the name the paper gives the marked pair's first component, so
    the pair's value itself is set to 0.0 in the input, and the target stays what the task
    says it is, the sum of the first components of the marked pairs. The rule is keyed
    to "the first pair gets marked", so it applies to whichever mark lands on position 0
    (X2 may land there when X1 did not); that pair keeps marker 1 (not -1).
  * The stopping rule's "mean training error" is the mean squared error of the last
    2,000 training sequences (the paper's E without its factor 1/2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import H97, Batch, Judgement, Published, Task, check_int, last_step_mask, uniform_int
from .rules import WindowRule


def marked_pairs(
    n: int, T: int, low: float, combine: Callable, generator: torch.Generator, first_marked: float
) -> Batch:
    """The 1997 adding/multiplication sequences: values uniform in [low, 1], two marks.

    first_marked: the value the first pair takes when it is marked (the paper sets X1 to
    0.0 for adding, 1.0 for multiplication), written into the input.
    combine(x1, x2) -> (n,) targets from the values of the two marked pairs as input.
    """
    lengths = uniform_int(T, T + T // 10, n, generator)
    Tmax = int(lengths.max())
    inside = torch.arange(Tmax).unsqueeze(0) < lengths.unsqueeze(1)  # (n, Tmax)
    values = (low + (1 - low) * torch.rand(n, Tmax, generator=generator)) * inside
    p1 = uniform_int(0, 9, n, generator)
    r = uniform_int(0, T // 2 - 3, n, generator)  # one of the T/2 - 2 free pairs of 0 .. T/2 - 2
    p2 = r + (r >= p1).long()
    rows = torch.arange(n)
    marker = torch.zeros(n, Tmax)
    marker[:, 0] = -1.0
    marker[rows, lengths - 1] = -1.0
    marker[rows, p1] = 1.0
    marker[rows, p2] = 1.0
    values[:, 0] = torch.where(marker[:, 0] == 1.0, torch.full((n,), first_marked), values[:, 0])
    x1, x2 = values[rows, p1], values[rows, p2]
    mask = last_step_mask(lengths, Tmax)
    targets = torch.zeros(n, Tmax, 1)
    targets[mask] = combine(x1, x2).unsqueeze(-1)
    inputs = torch.stack([values, marker * inside], -1)
    return Batch(inputs, targets, lengths, mask)


def last_output_error(task: Task, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(n,) y - t of the single output unit at each sequence's last step."""
    return (task.predict(outputs) - batch.targets)[batch.mask].squeeze(-1)


@dataclass(frozen=True)
class Adding(Task):
    """T: the minimum sequence length (lengths are uniform on [T, T + T/10]); T >= 22 so
    that the first 10 pairs lie inside the first T/2 - 1."""

    T: int = 100

    name: ClassVar[str] = "adding"
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "last"
    published: ClassVar[tuple[Published, ...]] = tuple(
        Published(H97, {"T": T}, "LSTM, 2 blocks x 2 cells (93 weights)", seq, wrong, 2560)
        for T, seq, wrong in [(100, 74_000, 1), (500, 209_000, 0), (1000, 853_000, 1)]
    )

    def __post_init__(self):
        check_int("T", self.T, 22)

    input_size: ClassVar[int] = 2
    output_size: ClassVar[int] = 1
    test_size: ClassVar[int] = 2560

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return marked_pairs(n, self.T, -1.0, lambda x1, x2: 0.5 + (x1 + x2) / 4, generator, first_marked=0.0)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: |y - t| < 0.04 at the end. Error: (y - t)^2."""
        e = last_output_error(self, outputs, batch)
        return Judgement(e.abs() < 0.04, e.square())

    def stopping_rule(self) -> WindowRule:
        """Mean training error < 0.01 and the last 2,000 sequences all correct."""
        return WindowRule(2000, max_wrong=0, max_mean_error=0.01, counts_window=True)


TASK = Adding
