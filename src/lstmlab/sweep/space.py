"""Greff et al.'s random-search space, each range configurable.

Greff, Srivastava, Koutnik, Steunebrink & Schmidhuber, "LSTM: A Search Space Odyssey"
(2017), section IV: hidden size log-uniform in [20, 200], learning rate log-uniform in
[1e-6, 1e-2], momentum 1 - log-uniform(0.01, 1) (so most mass near 0.99 ... 0), input noise
standard deviation uniform in [0, 1]. SGD with Nesterov-free momentum, online or minibatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _range(name, lo, hi, positive):
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi))
    if not ok or lo > hi or (positive and lo <= 0):
        raise ValueError(
            f"{name}=({lo!r}, {hi!r}) is invalid; allowed: low <= high" + (", both > 0 (log scale)" if positive else "")
        )


@dataclass(frozen=True)
class SearchSpace:
    hidden: tuple[int, int] = (20, 200)  # log-uniform, integer
    lr: tuple[float, float] = (1e-6, 1e-2)  # log-uniform
    one_minus_momentum: tuple[float, float] = (0.01, 1.0)  # log-uniform; momentum = 1 - this
    input_noise: tuple[float, float] = (0.0, 1.0)  # uniform: std of Gaussian input noise

    def __post_init__(self):
        _range("hidden", *self.hidden, positive=True)
        _range("lr", *self.lr, positive=True)
        _range("one_minus_momentum", *self.one_minus_momentum, positive=True)
        _range("input_noise", *self.input_noise, positive=False)
        if self.one_minus_momentum[1] > 1:
            raise ValueError(
                f"one_minus_momentum={self.one_minus_momentum!r} is invalid; allowed: "
                "values in (0, 1] (momentum in [0, 1))"
            )

    def sample(self, trial) -> dict:
        """Draw one configuration through an Optuna trial (names as they appear in reports)."""
        return {
            "hidden": trial.suggest_int("hidden", *self.hidden, log=True),
            "lr": trial.suggest_float("lr", *self.lr, log=True),
            "momentum": 1 - trial.suggest_float("one_minus_momentum", *self.one_minus_momentum, log=True),
            "input_noise": trial.suggest_float("input_noise", *self.input_noise),
        }


def parse_range(text: str, name: str) -> tuple[float, float]:
    """'LOW,HIGH' from the command line."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')}={text!r} is invalid; allowed: LOW,HIGH") from None
    return lo, hi
