"""The two-sequence problem (Bengio et al. 1994; Hochreiter & Schmidhuber 1997, 3a/3b).

One input line. A sequence is of class 1 or 2 with probability 0.5; its first N elements
carry the class (+1.0 for class 1, -1.0 for class 2) and every later element is Gaussian
noise with mean 0 and variance 0.2. The target at the last step is 1.0 for class 1 and
0.0 for class 2 (a sigmoid output with squared error). A sequence is misclassified when
the absolute error at its end exceeds 0.2.

Stopping: ST1, none of a fixed test set of 256 sequences misclassified; ST2, ST1 and the
mean absolute error on that set below 0.01. After stopping, the fraction misclassified is
measured on 2,560 fresh sequences.

variant "3b" adds the same Gaussian noise (variance 0.2) to the first N elements too.
Readings: the length is T exactly (the definition in docs/tasks.md gives no range); variant
3c of the paper (noisy, real-valued targets) is not implemented: its definition could not
be confirmed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import H97, Batch, Judgement, Published, Task, check_choice, check_int, last_step_mask
from .rules import EvalRule

NOISE_STD = math.sqrt(0.2)


@dataclass(frozen=True)
class TwoSequence(Task):
    """T: sequence length (> N). N: informative leading elements (>= 1). variant: "3a"
    (clean leading elements) or "3b" (noisy ones). criterion: "st1" or "st2"."""

    T: int = 100
    N: int = 3
    variant: str = "3a"
    criterion: str = "st2"

    name: ClassVar[str] = "two-sequence"
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "last"
    input_size: ClassVar[int] = 1
    output_size: ClassVar[int] = 1
    test_size: ClassVar[int] = 2560
    published: ClassVar[tuple[Published, ...]] = tuple(
        Published(H97, {"T": T, "N": 3, "variant": "3a", "criterion": c}, "LSTM", seq)
        for T, c, seq in [(100, "st1", 27_380), (100, "st2", 39_850),
                          (1000, "st1", 446_850), (1000, "st2", 452_460)])

    def __post_init__(self):
        check_int("N", self.N, 1)
        check_int("T", self.T, self.N + 1)
        check_choice("variant", self.variant, ("3a", "3b"))
        check_choice("criterion", self.criterion, ("st1", "st2"))

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        label = torch.randint(0, 2, (n,), generator=generator).float()  # 1: class 1
        x = NOISE_STD * torch.randn(n, self.T, generator=generator)
        sign = (2 * label - 1).unsqueeze(1)
        if self.variant == "3a":
            x[:, :self.N] = sign
        else:
            x[:, :self.N] += sign
        lengths = torch.full((n,), self.T, dtype=torch.long)
        mask = last_step_mask(lengths, self.T)
        targets = torch.zeros(n, self.T, 1)
        targets[:, -1, 0] = label
        return Batch(x.unsqueeze(-1), targets, lengths, mask)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: |y - t| <= 0.2 at the end. Error: |y - t|."""
        e = (self.predict(outputs) - batch.targets)[batch.mask].squeeze(-1).abs()
        return Judgement(e <= 0.2, e)

    def eval_sets(self, generator: torch.Generator) -> dict[str, Batch]:
        return {"test": self.sample(256, generator)}

    def stopping_rule(self) -> EvalRule:
        return EvalRule(("test",), max_mean_error=0.01 if self.criterion == "st2" else None)


TASK = TwoSequence
