"""The embedded Reber grammar (Cleeremans et al. 1989; Hochreiter & Schmidhuber 1997,
experiment 1).

Seven symbols, one-hot, in the order of SYMBOLS. A Reber string is a walk through the
automaton below from B to E, each branch taken with probability 0.5:

    1 -T-> 2   1 -P-> 3   2 -S-> 2   2 -X-> 4   3 -T-> 3   3 -V-> 5
    4 -X-> 3   4 -S-> 6   5 -P-> 4   5 -V-> 6   6 -E-> end      (B leads to 1)

An embedded string is B, T|P, a Reber string, the same T|P, E. The net reads one symbol a
step and predicts the next, trained on the actual next symbol (one-hot, sigmoid outputs,
squared error); the inputs are every symbol but the last.

The 1997 protocol: 256 training strings drawn at random (repeats allowed) and 256 test
strings drawn at random but never one already in the training set; training strings are
picked at random from the training set. A string is predicted correctly when at every
step the output units of the legal next symbols are the most active ones (each legal
output above every illegal one). Training stops when every string of both sets is.
The two sets are fixed by `data_seed` (drawn with their own torch.Generator).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from typing import ClassVar

import torch

from .base import H97, Batch, Judgement, Published, Task, check_int, mean_squared_error, one_hot, within
from .rules import EvalRule

SYMBOLS = ("B", "T", "P", "S", "X", "V", "E")
INNER = {
    1: (("T", 2), ("P", 3)),
    2: (("S", 2), ("X", 4)),
    3: (("T", 3), ("V", 5)),
    4: (("X", 3), ("S", 6)),
    5: (("P", 4), ("V", 6)),
    6: (("E", 0),),
}
INDEX = {s: i for i, s in enumerate(SYMBOLS)}


@cache
def _code(symbols: str) -> int:
    return sum(1 << INDEX[c] for c in symbols)


class Coins:
    """Fair coin flips (0 or 1) from a torch.Generator, drawn in blocks."""

    def __init__(self, generator: torch.Generator, block: int = 4096):
        self.generator, self.block, self.bits = generator, block, []

    def __call__(self) -> int:
        if not self.bits:
            self.bits = torch.randint(0, 2, (self.block,), generator=self.generator).tolist()[::-1]
        return self.bits.pop()


def embedded_string(coin: Coins) -> tuple[str, list[str]]:
    """One embedded Reber string and, for each of its symbols, the symbols allowed next
    ("" after the final E)."""
    outer = "TP"[coin()]
    string, legal = ["B", outer, "B"], ["TP", "B", "TP"]
    state = 1
    while state != 0:
        options = INNER[state]
        symbol, state = options[coin()] if len(options) == 2 else options[0]
        string.append(symbol)
        legal.append("".join(s for s, _ in INNER[state]) if state else outer)
    string += [outer, "E"]
    legal += ["E", ""]
    return "".join(string), legal


def string_batch(strings: list[str], legal: list[list[str]], targets: str = "next") -> Batch:
    """Strings -> inputs s[:-1]; targets the next symbol one-hot ("next") or the legal
    next symbols multi-hot ("legal"); legal (n, T, 7) bool."""
    n, K = len(strings), len(SYMBOLS)
    lengths = torch.tensor([len(s) - 1 for s in strings])
    T = int(lengths.max())
    symbols = torch.zeros(n, T + 1, dtype=torch.long)
    codes = torch.zeros(n, T, dtype=torch.long)  # the legal set as bits over SYMBOLS
    for i, (s, ok) in enumerate(zip(strings, legal)):
        symbols[i, : len(s)] = torch.tensor([INDEX[c] for c in s])
        codes[i, : len(s) - 1] = torch.tensor([_code(x) for x in ok[: len(s) - 1]])
    allowed = (codes.unsqueeze(-1) >> torch.arange(K)) & 1 == 1
    mask = within(lengths, T)
    inputs = one_hot(symbols[:, :-1], K) * mask.unsqueeze(-1)
    if targets == "next":
        target = one_hot(symbols[:, 1:], K) * mask.unsqueeze(-1)
    else:
        target = allowed.float()
    return Batch(inputs, target, lengths, mask, allowed)


def most_active_correct(task: Task, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(n,) True when at every target step each legal output exceeds every illegal one."""
    y = task.predict(outputs)
    lowest_legal = torch.where(batch.legal, y, torch.full_like(y, float("inf"))).amin(-1)
    highest_illegal = torch.where(batch.legal, torch.full_like(y, float("-inf")), y).amax(-1)
    ok = (lowest_legal > highest_illegal) | ~batch.mask
    return ok.all(1)


@dataclass(frozen=True)
class Reber(Task):
    """data_seed: seeds the fixed training and test strings. train_size / test_strings:
    the sizes of the two sets (256 each in the paper)."""

    data_seed: int = 0
    train_size: int = 256
    test_strings: int = 256

    name: ClassVar[str] = "reber"
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "every"
    input_size: ClassVar[int] = len(SYMBOLS)
    output_size: ClassVar[int] = len(SYMBOLS)
    published: ClassVar[tuple[Published, ...]] = (
        Published(H97, {}, "LSTM, 3 blocks x 2 cells, lr 0.5", 8_440, note="100% of trials"),
        Published(H97, {}, "LSTM, 4 blocks x 1 cell, lr 0.1", 39_740, note="100% of trials"),
        Published(H97, {}, "Elman, 15 hidden", None, note="0% of trials after 200,000"),
    )

    def __post_init__(self):
        check_int("data_seed", self.data_seed, 0)
        check_int("train_size", self.train_size, 1)
        check_int("test_strings", self.test_strings, 1)

    @property
    def test_size(self) -> int:
        return self.test_strings

    @cached_property
    def _sets(self) -> tuple[Batch, Batch]:
        coin = Coins(torch.Generator().manual_seed(self.data_seed))
        train = [embedded_string(coin) for _ in range(self.train_size)]
        seen, test = {s for s, _ in train}, []
        while len(test) < self.test_strings:
            s, legal = embedded_string(coin)
            if s not in seen:
                test.append((s, legal))
        return tuple(string_batch([s for s, _ in part], [ok for _, ok in part]) for part in (train, test))

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """n strings picked at random (with replacement) from the training set."""
        return self._sets[0].select(torch.randint(0, self.train_size, (n,), generator=generator))

    def test_batches(self, generator: torch.Generator, max_batch: int = 256) -> Iterator[Batch]:
        test = self._sets[1]
        for start in range(0, len(test), max_batch):
            yield test.select(torch.arange(start, min(start + max_batch, len(test))))

    def eval_sets(self, generator: torch.Generator) -> dict[str, Batch]:
        return {"train": self._sets[0], "test": self._sets[1]}

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: the legal next symbols' outputs are the most active at every step.
        Error: mean (y - t)^2 against the one-hot next symbol."""
        return Judgement(most_active_correct(self, outputs, batch), mean_squared_error(self, outputs, batch))

    def stopping_rule(self) -> EvalRule:
        return EvalRule(("train", "test"))


TASK = Reber
