"""The continual embedded Reber grammar (Gers, Schmidhuber & Cummins 2000).

Embedded Reber strings (`lstmlab.tasks.reber`) concatenated into one stream with no
reset: after each final E the next string's B follows. At every step the target is the
set of symbols the grammar allows next (multi-hot, sigmoid outputs, squared error); a
prediction is correct when every output's squared error is below 0.49. A stream is
correct when every prediction in it is. "Perfect": 10 test streams of 100,000 symbols
all correct.

Readings and limits: the paper updated weights online at every symbol and ended a
training stream at its first error (or after 10^6 symbols). Here a training sequence is
a stream of `length` symbols starting at a string boundary, trained by backpropagation
through the whole stream; the trainer does not cut a stream at its first error. There is
no stopping rule: the paper trained for a fixed budget and then tested.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import GERS00, Batch, Judgement, Published, Task, check_int
from .reber import SYMBOLS, Coins, embedded_string, string_batch
from .rules import StoppingRule


def stream(coin: Coins, length: int) -> tuple[str, list[str]]:
    """length + 1 symbols of concatenated strings, and the symbols allowed after each."""
    symbols, legal = "", []
    while len(symbols) < length + 1:
        s, ok = embedded_string(coin)
        symbols += s
        legal += ok[:-1] + ["B"]
    return symbols[: length + 1], legal[: length + 1]


@dataclass(frozen=True)
class ContinualReber(Task):
    """length: symbols in a training stream. test_length: symbols in each test stream.
    test_streams: how many test streams (10 in the paper)."""

    length: int = 1_000
    test_length: int = 100_000
    test_streams: int = 10

    name: ClassVar[str] = "cerg"
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "every"
    input_size: ClassVar[int] = len(SYMBOLS)
    output_size: ClassVar[int] = len(SYMBOLS)
    published: ClassVar[tuple[Published, ...]] = (
        Published(GERS00, {}, "LSTM without forget gates", note="0% of runs perfect"),
        Published(GERS00, {}, "LSTM with forget gates", note="18% of runs perfect"),
        Published(GERS00, {}, "LSTM with forget gates, learning-rate decay", note="62% of runs perfect"),
    )

    def __post_init__(self):
        check_int("length", self.length, 1)
        check_int("test_length", self.test_length, 1)
        check_int("test_streams", self.test_streams, 1)

    @property
    def test_size(self) -> int:
        return self.test_streams

    def streams(self, n: int, length: int, generator: torch.Generator) -> Batch:
        coin = Coins(generator)
        parts = [stream(coin, length) for _ in range(n)]
        return string_batch([s for s, _ in parts], [ok for _, ok in parts], targets="legal")

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return self.streams(n, self.length, generator)

    def test_batches(self, generator: torch.Generator, max_batch: int = 256) -> Iterator[Batch]:
        for start in range(0, self.test_streams, max_batch):
            yield self.streams(min(max_batch, self.test_streams - start), self.test_length, generator)

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: every output's (y - t)^2 < 0.49 at every step. Error: the fraction
        of steps with a wrong prediction."""
        wrong = ((self.predict(outputs) - batch.targets).square() >= 0.49).any(-1) & batch.mask
        return Judgement(~wrong.any(1), wrong.sum(1) / batch.mask.sum(1))

    def stopping_rule(self) -> StoppingRule:
        return StoppingRule()


TASK = ContinualReber
