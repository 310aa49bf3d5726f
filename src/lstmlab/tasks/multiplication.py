"""The multiplication problem (Hochreiter & Schmidhuber 1997, experiment 5, section 5.5).

As the adding problem (`lstmlab.tasks.adding`: the same markers, the same lengths uniform
on [T, T + T/10]) except that the values are uniform in [0, 1], the target at the end is
the product X1 * X2, and "in the rare case where the first pair of the input sequence gets
marked, we set X1 to 1.0" (the neutral element of the product, as 0.0 is of the sum).

Readings of the text (shared with the adding problem, whose docstring gives the reasons):
  * Setting X1 sets the marked first pair's value in the input (X1 is the paper's name for
    that component), so the target is always the product of the values of the two marked
    pairs as the net sees them; the rule applies to whichever mark lands on position 0.
  * Stopping: "as soon as less than n_seq of the 2000 most recent training sequences lead
    to absolute errors exceeding 0.04", n_seq = 140 or 13 (Table 8); the window is the
    stopping rule, so its sequences count. A sequence is wrong when |y - t| > 0.04
    (Table 8: "error > 0.04"), so it is correct when |y - t| <= 0.04.
  * The test set has 2,560 sequences; the paper reports the wrong ones and the test MSE.
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
    n_seq of the last 2,000 sequences were wrong (the paper ran 140 and 13 at T = 100)."""

    T: int = 100
    n_seq: int = 140

    name: ClassVar[str] = "multiplication"
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "last"
    input_size: ClassVar[int] = 2
    output_size: ClassVar[int] = 1
    test_size: ClassVar[int] = 2560
    published: ClassVar[tuple[Published, ...]] = tuple(
        Published(
            H97,
            {"T": 100, "n_seq": n_seq},
            "LSTM, 2 blocks x 2 cells (93 weights)",
            seq,
            wrong,
            2560,
            f"test MSE {mse}",
        )
        for n_seq, seq, wrong, mse in [(140, 482_000, 139, 0.0223), (13, 1_273_000, 14, 0.0139)]
    )

    def __post_init__(self):
        check_int("T", self.T, 22)
        check_int("n_seq", self.n_seq, 1, 2000)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return marked_pairs(n, self.T, 0.0, lambda x1, x2: x1 * x2, generator, first_marked=1.0)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: |y - t| <= 0.04 at the end (wrong: "error > 0.04"). Error: (y - t)^2."""
        e = last_output_error(self, outputs, batch)
        return Judgement(e.abs() <= 0.04, e.square())

    def stopping_rule(self) -> WindowRule:
        return WindowRule(2000, max_wrong=self.n_seq - 1, counts_window=True)


TASK = Multiplication
