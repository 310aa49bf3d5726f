"""Handwritten digits pixel by pixel: scikit-learn's load_digits as 64-step sequences, a
small stand-in for sequential MNIST (ships with scikit-learn, no download).

Each 8x8 image (1,797 in all, grey levels 0 .. 16) is read row by row, one pixel a step,
scaled to [0, 1]: inputs (n, 64, 1). The class (0 .. 9) is the target at the last step,
with cross-entropy over 10 outputs. The split is fixed: the first 1,500 images train, the
remaining 297 test (scikit-learn's order). A sequence is correct when its most probable
class is right; its error is the cross-entropy. No stopping rule: runs go to their budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from .base import Batch, Judgement, Task, last_step_mask
from .copy_memory import cross_entropy_judgement
from .rules import StoppingRule

TRAIN_IMAGES = 1500


@dataclass(frozen=True)
class Digits(Task):
    """No parameters."""

    name: ClassVar[str] = "digits"
    loss_kind: ClassVar[str] = "cross-entropy"
    target: ClassVar[str] = "last"
    input_size: ClassVar[int] = 1
    output_size: ClassVar[int] = 10
    test_size: ClassVar[int] = 297

    @cached_property
    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        from ..extras import require

        d = require("sklearn.datasets", "tasks", "task 'digits' (its data set)").load_digits()
        pixels = torch.tensor(d.data, dtype=torch.float32) / 16.0  # (1797, 64)
        return pixels.unsqueeze(-1), torch.tensor(d.target, dtype=torch.long)

    def _batch(self, index: torch.Tensor) -> Batch:
        pixels, labels = self._data
        n = index.shape[0]
        lengths = torch.full((n,), 64, dtype=torch.long)
        mask = last_step_mask(lengths, 64)
        targets = torch.zeros(n, 64, dtype=torch.long)
        targets[:, -1] = labels[index]
        return Batch(pixels[index], targets, lengths, mask)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """n training images drawn at random (with replacement)."""
        return self._batch(torch.randint(0, TRAIN_IMAGES, (n,), generator=generator))

    def test_batches(self, generator: torch.Generator, max_batch: int = 256) -> Iterator[Batch]:
        total = TRAIN_IMAGES + self.test_size
        for start in range(TRAIN_IMAGES, total, max_batch):
            yield self._batch(torch.arange(start, min(start + max_batch, total)))

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        return cross_entropy_judgement(outputs, batch)

    def stopping_rule(self) -> StoppingRule:
        return StoppingRule()


TASK = Digits
