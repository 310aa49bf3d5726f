"""Bach chorales as piano rolls (the source of the JSB Chorales benchmark used by Greff et
al.), from the corpus that ships with music21 (no download).

A chorale becomes a piano roll over the 88 piano keys (MIDI 21 .. 108): step t holds the
notes sounding at time t * step (in quarter notes, so step = 1.0 samples every beat; a
note shorter than a step that does not sound on a sample point is skipped, as in JSB).
Inputs are frames 0 .. L-2, targets frames 1 .. L-1 (next-step prediction), 88 sigmoid
outputs with binary cross-entropy summed over keys: the loss is the negative
log-likelihood per time step. A sequence counts as correct when every step's predicted
frame (outputs above 0.5) is exactly the target frame.

Parsing is done lazily, on first use, for the first `max_chorales` chorales in
music21's Riemenschneider order (about 0.06 s each); nothing is written into the
repository. Every fifth chorale (index 4, 9, ...) is a test chorale, the rest train.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import Batch, Judgement, Task, check_int, within
from .rules import StoppingRule

LOWEST, KEYS = 21, 88


def piano_roll(score, step: float) -> torch.Tensor:
    """A music21 score -> (L, 88) float32, the keys sounding at each sample time."""
    L = math.ceil(float(score.highestTime) / step)
    roll = torch.zeros(L, KEYS)
    for note in score.flatten().notes:
        begin, end = float(note.offset), float(note.offset + note.quarterLength)
        first, stop = math.ceil(begin / step - 1e-9), math.ceil(end / step - 1e-9)
        for pitch in note.pitches:
            if 0 <= pitch.midi - LOWEST < KEYS and first < stop:
                roll[first:stop, pitch.midi - LOWEST] = 1.0
    return roll


@dataclass(frozen=True)
class Chorales(Task):
    """max_chorales: how many chorales to parse (>= 5, at most 371). step: quarter notes
    per time step (> 0)."""

    max_chorales: int = 60
    step: float = 1.0

    name: ClassVar[str] = "chorales"
    loss_kind: ClassVar[str] = "multilabel"
    target: ClassVar[str] = "every"
    input_size: ClassVar[int] = KEYS
    output_size: ClassVar[int] = KEYS

    def __post_init__(self):
        check_int("max_chorales", self.max_chorales, 5, 371)
        if not isinstance(self.step, (int, float)) or isinstance(self.step, bool) or self.step <= 0:
            raise ValueError(f"step={self.step!r} is invalid; allowed: a number > 0 (quarter notes)")

    @cached_property
    def _rolls(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        from ..extras import require

        corpus = require("music21.corpus", "tasks", "task 'chorales' (its corpus)")
        chorales = require("music21.corpus.chorales", "tasks", "task 'chorales' (its corpus)")

        names = list(chorales.Iterator(returnType="filename"))[: self.max_chorales]
        rolls = [piano_roll(corpus.parse(name), self.step) for name in names]
        rolls = [r for r in rolls if r.shape[0] >= 2]
        return ([r for i, r in enumerate(rolls) if i % 5 != 4], [r for i, r in enumerate(rolls) if i % 5 == 4])

    @property
    def test_size(self) -> int:
        return len(self._rolls[1])

    @staticmethod
    def _batch(rolls: list[torch.Tensor]) -> Batch:
        lengths = torch.tensor([r.shape[0] - 1 for r in rolls])
        T = int(lengths.max())
        inputs, targets = torch.zeros(len(rolls), T, KEYS), torch.zeros(len(rolls), T, KEYS)
        for i, r in enumerate(rolls):
            inputs[i, : r.shape[0] - 1] = r[:-1]
            targets[i, : r.shape[0] - 1] = r[1:]
        return Batch(inputs, targets, lengths, within(lengths, T))

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """n training chorales drawn at random (with replacement)."""
        train = self._rolls[0]
        return self._batch([train[i] for i in torch.randint(0, len(train), (n,), generator=generator)])

    def test_batches(self, generator: torch.Generator, max_batch: int = 256) -> Iterator[Batch]:
        test = self._rolls[1]
        for start in range(0, len(test), max_batch):
            yield self._batch(test[start : start + max_batch])

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Correct: every predicted frame exact. Error: NLL per time step (nats)."""
        m = batch.mask
        nll = F.binary_cross_entropy_with_logits(outputs, batch.targets, reduction="none").sum(-1)
        exact = ((outputs > 0) == (batch.targets > 0.5)).all(-1) | ~m
        return Judgement(exact.all(1), (nll * m).sum(1) / m.sum(1))

    def stopping_rule(self) -> StoppingRule:
        return StoppingRule()


TASK = Chorales
