"""Training on the tasks of `lstmlab.tasks`: the 1997 regime (online plain SGD) or the
modern one (minibatches, Adam), gradient clipping, the task's own stopping criterion,
atomic resumable checkpoints and a JSON-lines metrics log.

    >>> from lstmlab.train import TrainConfig, train
    >>> config = TrainConfig("reber", cell="lstm1997", hidden_size=6, lr=0.5,
    ...                      max_sequences=20_000, out_dir="runs/reber")
    >>> result = train(config)  # doctest: +SKIP
"""

from .config import BUDGET_FIELDS, TrainConfig
from .loop import RunResult, Trainer, TrainingDiverged, TrainingInterrupted, train
from .model import SequenceModel, build_model

__all__ = [
    "BUDGET_FIELDS",
    "RunResult",
    "SequenceModel",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_model",
    "train",
]
