"""Stopping rules: when a task counts as learned.

A rule sees every training sequence's verdict, in order, through update(); rules that
need a check on fixed sets see evaluations through update_eval(). Both return True once
the task counts as learned. state_dict() makes runs resumable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .base import Judgement


class StoppingRule:
    """Never stops: the run ends at its budget (tasks whose papers report curves).

    confirmation: how many of the sequences seen when a rule fires only confirmed a
    success that had already begun, so a run's sequences to success are sequences seen
    minus confirmation. It depends on what the paper counted: where its window was a
    check run after training (1997, 2a-2c: "after training, during 10,000 successive
    sequences ..."; 2a reports 5,040 sequences for a 10,000-sequence check) the window is
    not counted; where the window was the training stopping rule (adding, multiplication,
    temporal order: "training is stopped when ... the last 2,000 sequences were
    processed correctly") the paper counted every sequence until the stop, window included.
    """

    confirmation = 0

    def update(self, judgement: Judgement) -> bool:
        return False

    def update_eval(self, judgements: Mapping[str, Judgement]) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> str:
        return "none (runs to its budget)"


class WindowRule(StoppingRule):
    """Stop once the last `window` training sequences hold at most `max_wrong` wrong ones
    and (if `max_mean_error` is set) their mean error is below it. The window must be full.

    counts_window: True when the paper counted the window's sequences as training
    sequences (it was the stopping rule); False when the window was a check after
    training (then confirmation = window).
    """

    def __init__(
        self, window: int, max_wrong: int = 0, max_mean_error: float | None = None, counts_window: bool = False
    ):
        self.window, self.max_wrong, self.max_mean_error = window, max_wrong, max_mean_error
        self.confirmation = 0 if counts_window else window
        self.correct: deque[bool] = deque(maxlen=window)
        self.error: deque[float] = deque(maxlen=window)
        self.wrong = 0  # in the window, kept as it slides (summing 10,000 at every update costs)

    def update(self, judgement: Judgement) -> bool:
        for ok in judgement.correct.tolist():
            if len(self.correct) == self.window:
                self.wrong -= not self.correct[0]
            self.correct.append(ok)
            self.wrong += not ok
        self.error.extend(judgement.error.tolist())
        if len(self.correct) < self.window or self.wrong > self.max_wrong:
            return False
        return self.max_mean_error is None or sum(self.error) / self.window < self.max_mean_error

    def state_dict(self) -> dict:
        return {
            "correct": torch.tensor(list(self.correct), dtype=torch.bool),
            "error": torch.tensor(list(self.error), dtype=torch.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        self.correct = deque(state["correct"].tolist(), maxlen=self.window)
        self.error = deque(state["error"].tolist(), maxlen=self.window)
        self.wrong = len(self.correct) - sum(self.correct)

    def describe(self) -> str:
        s = f"at most {self.max_wrong} wrong of the last {self.window:,} training sequences"
        return s + (f" and their mean error < {self.max_mean_error}" if self.max_mean_error else "")


class EvalRule(StoppingRule):
    """Stop when, at an evaluation, each of the named fixed sets holds at most `max_wrong`
    wrong sequences (0: every one correct) and (if `max_mean_error` is set) the mean error
    over set `mean_error_set` is below it."""

    def __init__(
        self,
        sets: tuple[str, ...],
        max_mean_error: float | None = None,
        mean_error_set: str = "test",
        max_wrong: int = 0,
    ):
        self.sets, self.max_mean_error, self.mean_error_set = sets, max_mean_error, mean_error_set
        self.max_wrong = max_wrong

    def update_eval(self, judgements: Mapping[str, Judgement]) -> bool:
        if any(int((~judgements[s].correct).sum()) > self.max_wrong for s in self.sets):
            return False
        return self.max_mean_error is None or float(judgements[self.mean_error_set].error.mean()) < self.max_mean_error

    def describe(self) -> str:
        sets = f"the {' and '.join(self.sets)} set(s)"
        s = (
            f"every sequence of {sets} correct at an evaluation"
            if self.max_wrong == 0
            else f"at most {self.max_wrong} wrong sequences in {sets} at an evaluation"
        )
        return s + (f", mean {self.mean_error_set} error < {self.max_mean_error}" if self.max_mean_error else "")
