"""The task registry: every module in this package that defines `TASK` is one problem.

    >>> import torch
    >>> from lstmlab import tasks
    >>> task = tasks.make("adding", T=100)
    >>> batch = task.sample(4, torch.Generator().manual_seed(0))
    >>> batch.inputs.shape[0], task.input_size, task.test_size
    (4, 2, 2560)

Adding a task means adding one file here with `TASK = SomeTask` (a frozen dataclass
subclassing `Task`, its fields the task's parameters); nothing else.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from ..registry import discover
from .base import Batch, Judgement, Published, Task
from .rules import EvalRule, StoppingRule, WindowRule

_REGISTRY: dict[str, type[Task]] = {}  # filled by discover() at the end of this file


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_REGISTRY)


def get_task_class(name: str) -> type[Task]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"task={name!r} is not a registered task; valid tasks: {', '.join(task_names())}")
    return _REGISTRY[name]


def task_params(name: str) -> dict[str, tuple[type, object]]:
    """A task's parameters: name -> (type, default)."""
    cls = get_task_class(name)
    return {f.name: (type(f.default) if f.default is not MISSING else object, f.default) for f in fields(cls)}


def make(name: str, **params) -> Task:
    """The task `name` with `params` (each task file documents its parameters)."""
    cls = get_task_class(name)
    allowed = [f.name for f in fields(cls)]
    for key in params:
        if key not in allowed:
            raise ValueError(
                f"{key}={params[key]!r} is not a parameter of task {name!r}; allowed: {', '.join(allowed) or 'none'}"
            )
    return cls(**params)


_REGISTRY.update(discover(__name__, __path__, "TASK", lambda cls: cls.name))

__all__ = [
    "Batch",
    "EvalRule",
    "Judgement",
    "Published",
    "StoppingRule",
    "Task",
    "WindowRule",
    "get_task_class",
    "make",
    "task_names",
    "task_params",
]
