"""Very long time lags with distractors (Hochreiter & Schmidhuber 1997, experiment 2c).

p + 4 input symbols, one-hot: distractors a_1 .. a_p (indices 0 .. p-1), the trigger e
(p), b (p + 1), x (p + 2), y (p + 3). A sequence is (b, x|y, q + k distractors, e, x|y):
the second symbol is x or y with probability 0.5, the distractors are uniform over
a_1 .. a_p, and k >= 0 is geometric, P(k) = 0.1 * 0.9^k (after the q prefix distractors
each further symbol is a distractor with probability 9/10, else the trigger e). The last
symbol repeats the second. The net predicts it when it reads e: the inputs are every
symbol but the last (length q + k + 3), and the only target is at the last input step,
one-hot over the two output units (x, y). The minimum lag is q + 1.

Success: both outputs' absolute error below 0.2 for 10,000 consecutive sequences (a check
after training: its sequences are not counted).

The paper's rows (its Table 3, 20 trials each; `published`, and `ROWS` as (q, p) pairs in
the table's order), sequences until success: (50, 50) 30,000; (100, 100) 31,000;
(200, 200) 33,000; (500, 500) 38,000; (1000, 1000) 49,000; (1000, 500) 49,000;
(1000, 200) 75,000; (1000, 100) 135,000; (1000, 50) 203,000. Each row is
`tasks.make("lag-distractor", q=q, p=p)`.

Readings of the text (section 5.2, task 2c):
  * The sequence sets are written with indices "1 <= i <= q"; the distractors are
    a_1 .. a_p ("a_1, ..., a_p are also called distractor symbols", and the expected
    count of each is (q + 10) / p), so they are drawn uniformly from the p distractors.
  * "(1) randomly generate a sequence prefix of length q + 2": b, x|y and q distractors;
    "(2) ... additional elements (not b, e, x, y) with probability 9/10 or, alternatively,
    an e with probability 1/10" (a transcription we read gives 1/10 for both; the
    paper's expected length, q + 14, needs 9/10);
    "(3) conclude the sequence with x or y". The shortest sequence has q + 4 symbols.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import H97, Batch, Judgement, Published, Task, check_int, last_step_mask, max_abs_error, one_hot
from .rules import WindowRule

# The (q, p) pairs of the paper's Table 3, in its order.
ROWS: tuple[tuple[int, int], ...] = (
    (50, 50),
    (100, 100),
    (200, 200),
    (500, 500),
    (1000, 1000),
    (1000, 500),
    (1000, 200),
    (1000, 100),
    (1000, 50),
)


@dataclass(frozen=True)
class LagDistractor(Task):
    """q: the fixed number of distractors (q >= 0); p: the number of distinct distractor
    symbols (p >= 1)."""

    q: int = 100
    p: int = 100

    name: ClassVar[str] = "lag-distractor"
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "last"
    output_size: ClassVar[int] = 2
    test_size: ClassVar[int] = 10_000
    published: ClassVar[tuple[Published, ...]] = tuple(
        Published(H97, {"q": q, "p": p}, "LSTM, 2 blocks x 1 cell", seq, note=f"{w:,} weights; mean of 20 trials")
        for (q, p), seq, w in zip(
            ROWS,
            [30_000, 31_000, 33_000, 38_000, 49_000, 49_000, 75_000, 135_000, 203_000],
            [364, 664, 1264, 3064, 6064, 3064, 1264, 664, 364],
        )
    )

    def __post_init__(self):
        check_int("q", self.q, 0)
        check_int("p", self.p, 1)

    @property
    def input_size(self) -> int:
        return self.p + 4

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        p = self.p
        second = torch.randint(0, 2, (n,), generator=generator)  # 0: x, 1: y
        u = 1 - torch.rand(n, generator=generator, dtype=torch.float64)  # (0, 1]
        k = torch.floor(torch.log(u) / torch.log(torch.tensor(0.9, dtype=torch.float64))).long()
        lengths = self.q + k + 3
        T = int(lengths.max())
        symbols = torch.randint(0, p, (n, T), generator=generator)  # distractors everywhere
        rows = torch.arange(n)
        symbols[:, 0] = p + 1  # b
        symbols[:, 1] = p + 2 + second
        symbols[rows, lengths - 1] = p  # e
        inside = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
        inputs = one_hot(symbols, p + 4) * inside.unsqueeze(-1)
        mask = last_step_mask(lengths, T)
        targets = torch.zeros(n, T, 2)
        targets[rows, lengths - 1, second] = 1.0
        return Batch(inputs, targets, lengths, mask)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: both outputs' |y - t| < 0.2 at the end. Error: the larger of the two."""
        e = max_abs_error(self, outputs, batch)
        return Judgement(e < 0.2, e)

    def stopping_rule(self) -> WindowRule:
        return WindowRule(10_000)


TASK = LagDistractor
