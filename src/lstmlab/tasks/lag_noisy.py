"""Long time lag without local regularities (Hochreiter & Schmidhuber 1997, experiment 2b).

As `lag` (2a), but the p - 1 middle symbols are drawn independently and uniformly from
a_1 .. a_{p-1}: (y, a_i1, ..., a_i(p-1), y) or (x, ..., x). The net still predicts the
next symbol at every step (that is its training signal), but only the last symbol is
predictable, and the paper's criterion says so: "during 10,000 successive, randomly
chosen input sequences, the maximal absolute error of all output units is below 0.25 at
sequence end" (section 5.2, task 2b).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import H97, Batch, Judgement, Published
from .lag import Lag, first_symbols, next_symbol_batch


@dataclass(frozen=True)
class LagNoisy(Lag):
    """p: the number of symbols minus one (p >= 2)."""

    name: ClassVar[str] = "lag-noisy"
    published: ClassVar[tuple[Published, ...]] = (Published(H97, {"p": 100}, "LSTM", 5_680, note="100% of trials"),)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        first = first_symbols(n, self.p, generator).unsqueeze(1)
        middle = torch.randint(0, self.p - 1, (n, self.p - 1), generator=generator)
        return next_symbol_batch(torch.cat([first, middle, first], 1), self.p + 1)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: max |y - t| over the outputs at the last step < 0.25. Error: that maximum."""
        last = batch.lengths - 1
        rows = torch.arange(len(batch))
        e = (self.predict(outputs[rows, last]) - batch.targets[rows, last]).abs().amax(-1)
        return Judgement(e < 0.25, e)


TASK = LagNoisy
