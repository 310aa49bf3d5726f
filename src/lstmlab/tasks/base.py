"""What every task shares: the batch it samples, the verdict its judge returns, its loss
and the published rows (the stopping rules are in `rules`).

Conventions (all tasks):
    n sequences, T = the longest sequence in the batch, F input features, K outputs.
    inputs  (n, T, F) float32, batch-first, zero after each sequence's end.
    lengths (n,) int64, the true length of each sequence (inputs are never truncated).
    mask    (n, T) bool, the steps that carry a target.
    targets (n, T, K) float32 for squared-error and multi-label losses, or (n, T) int64
            class indices for cross-entropy; zero where mask is False.
    outputs (n, T, K): the raw linear readout of a model; a task squashes them itself
            (`Task.predict`): sigmoid for the 1997 squared-error tasks, softmax for
            cross-entropy, identity for plain regression.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F

from .rules import StoppingRule

# Sources of published rows.
H97 = "Hochreiter & Schmidhuber 1997"
GERS00 = "Gers, Schmidhuber & Cummins 2000"
ARJOVSKY16 = "Arjovsky, Shah & Bengio 2016"
LE15 = "Le, Jaitly & Hinton 2015"

LOSSES = ("sigmoid-mse", "mse", "cross-entropy", "multilabel")
TARGETS = ("last", "every", "masked")
LOSS_STEPS = ("mean", "sum")


@dataclass(frozen=True)
class Batch:
    """n sequences, padded and masked (shapes in the module docstring).

    legal: (n, T, K) bool, the symbols a grammar allows next (Reber tasks), else None.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor
    legal: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device) -> Batch:
        move = lambda t: None if t is None else t.to(device)
        return Batch(*(move(getattr(self, f.name)) for f in fields(self)))

    def select(self, index: torch.Tensor) -> Batch:
        """The sequences at `index` (n',), trimmed to their own longest length."""
        T = int(self.lengths[index].max())
        pick = lambda t: None if t is None else t[index, :T]
        return Batch(pick(self.inputs), pick(self.targets), self.lengths[index], pick(self.mask), pick(self.legal))


@dataclass(frozen=True)
class Judgement:
    """A task's verdict on n sequences.

    correct: (n,) bool, the paper's per-sequence criterion.
    error: (n,) float, the paper's per-sequence error measure (each task says which).
    """

    correct: torch.Tensor
    error: torch.Tensor

    def __len__(self) -> int:
        return self.correct.shape[0]


@dataclass(frozen=True)
class Published:
    """One published result, for a reproduce table.

    setting: the task parameters it was obtained with, e.g. {"T": 100}.
    sequences: training sequences until the success criterion held (None if not given).
    test_errors / test_size: wrong test sequences out of how many (None if not given).
    """

    source: str
    setting: Mapping[str, object]
    model: str
    sequences: int | None = None
    test_errors: int | None = None
    test_size: int | None = None
    note: str = ""


# ---------------------------------------------------------------------------------------
# The task base class.


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """Raise ValueError naming `name` unless value is an int in [minimum, maximum]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= {minimum}{upper}")


def check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid; allowed: {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class Task:
    """A problem: subclasses are frozen dataclasses whose fields are its parameters.

    Class attributes a subclass sets: name, loss ("sigmoid-mse", "mse", "cross-entropy",
    "multilabel"), target ("last", "every", "masked": where targets sit), published.
    Properties: input_size, output_size, test_size.
    """

    name: ClassVar[str] = ""
    loss_kind: ClassVar[str] = "sigmoid-mse"
    target: ClassVar[str] = "last"
    published: ClassVar[tuple[Published, ...]] = ()

    @property
    def input_size(self) -> int:
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        raise NotImplementedError

    @property
    def test_size(self) -> int:
        raise NotImplementedError

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """n fresh training sequences drawn with `generator` (no global RNG)."""
        raise NotImplementedError

    def test_batches(self, generator: torch.Generator, max_batch: int = 256) -> Iterator[Batch]:
        """The paper's test set, test_size sequences in batches of at most max_batch.
        Generated tasks draw fresh sequences; fixed-data tasks ignore the generator."""
        done = 0
        while done < self.test_size:
            n = min(max_batch, self.test_size - done)
            yield self.sample(n, generator)
            done += n

    def eval_sets(self, generator: torch.Generator) -> dict[str, Batch]:
        """Fixed sets that the stopping rule checks at every evaluation ({} if none)."""
        return {}

    def stopping_rule(self) -> StoppingRule:
        """A fresh rule for one run."""
        return StoppingRule()

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw readout (n, T, K) -> the task's output units (squashed)."""
        if self.loss_kind in ("sigmoid-mse", "multilabel"):
            return torch.sigmoid(outputs)
        if self.loss_kind == "cross-entropy":
            return torch.softmax(outputs, -1)
        return outputs

    def loss(self, outputs: torch.Tensor, batch: Batch, steps: str = "mean") -> torch.Tensor:
        """The training loss, a scalar: the mean over sequences of each sequence's mean
        (steps="mean") or sum (steps="sum") over its target steps of the per-step error E_t.

        E_t: sigmoid-mse / mse, 0.5 * sum over outputs of (y - t)^2 (the 1997 paper's E);
        cross-entropy, -log p(target); multilabel, the binary cross-entropy summed over
        outputs (the negative log-likelihood of the frame). With one target step (most
        1997 problems) both are the paper's E. With many, "sum" is what the paper's
        updates at every step add up to over a sequence (its learning rates assume it);
        "mean" keeps one learning rate right for short and long sequences.
        """
        check_choice("steps", steps, LOSS_STEPS)
        m = batch.mask.to(outputs.dtype)  # (n, T)
        if self.loss_kind in ("sigmoid-mse", "mse"):
            per_step = 0.5 * (self.predict(outputs) - batch.targets).square().sum(-1)
        elif self.loss_kind == "cross-entropy":
            per_step = F.cross_entropy(outputs.transpose(1, 2), batch.targets, reduction="none")
        else:
            per_step = F.binary_cross_entropy_with_logits(outputs, batch.targets, reduction="none").sum(-1)
        per_sequence = (per_step * m).sum(1)
        return (per_sequence if steps == "sum" else per_sequence / m.sum(1)).mean()

    def judge(self, outputs: torch.Tensor, batch: Batch) -> Judgement:
        """Per-sequence correctness and error by the paper's criterion."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------
# Helpers the task files share.


def last_step_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(n, T) bool, True at each sequence's last step."""
    return torch.arange(T).unsqueeze(0) == (lengths - 1).unsqueeze(1)


def within(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(n, T) bool, True at steps inside each sequence."""
    return torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)


def uniform_int(low: int, high: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) int64 uniform on the closed range [low, high]."""
    return torch.randint(low, high + 1, (n,), generator=generator)


def max_abs_error(task: Task, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(n,) the largest |y - t| over every output unit at every target step."""
    err = (task.predict(outputs) - batch.targets).abs().amax(-1)  # (n, T)
    return torch.where(batch.mask, err, torch.zeros_like(err)).amax(1)


def mean_squared_error(task: Task, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(n,) the mean of (y - t)^2 over every output unit at every target step."""
    sq = (task.predict(outputs) - batch.targets).square().mean(-1)  # (n, T)
    m = batch.mask.to(sq.dtype)
    return (sq * m).sum(1) / m.sum(1)


def one_hot(symbols: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(symbols, k).to(torch.float32)
