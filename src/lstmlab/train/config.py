"""The training configuration: one frozen dataclass, validated where values enter."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from ..analysis.jacobians import check_closed_form
from ..cells import cell_names, get_cell
from ..tasks import make
from ..tasks.base import LOSS_STEPS

OPTIMIZERS = ("sgd", "adam")
INITS = ("torch", "1997")
# Fields that may differ between a run and its resumption: they bound the run or say
# where it writes, but do not change what a given update computes.
# flow_every only says how often the error flow is observed (on a copy of the model).
BUDGET_FIELDS = ("max_sequences", "max_seconds", "out_dir", "progress", "flow_every")


def _number(name, value, minimum=0.0, strict=True, optional=False):
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = "" if minimum == float("-inf") else f" > {minimum:g}" if strict else f" >= {minimum:g}"
        raise ValueError(
            f"{name}={value!r} is invalid; allowed: a finite number{bound}" + (" or None" if optional else "")
        )


def _integer(name, value, minimum, optional=False):
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name}={value!r} is invalid; allowed: an int >= {minimum}" + (" or None" if optional else "")
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on. The defaults are the 1997 paper's regime: online
    (one sequence per update) plain SGD. The modern regime is optimizer="adam" with
    batch_size > 1.

    task, task_params: the problem (lstmlab.tasks.make(task, **task_params)).
    cell, hidden_size, num_layers, init, forget_bias: the model, lstmlab.Recurrent
        followed by a linear readout (init "1997": U(-0.1, 0.1) weights everywhere).
    cell_options: fields of the cell changed for this run (CellSpec.with_options), e.g.
        {"output_gate": False, "output_activation": "identity"}.
    input_bias: initial input-gate bias (None: as init). The 1997 paper's remedy for
        internal state drift: a negative bias keeps the input gates nearly shut at first,
        so a cell does not integrate every input to saturation (cells with an input gate).
    skip_input: direct input-to-output weights beside the readout (SequenceModel).
    connect_after: sequences trained with the recurrent layer disconnected (outputs from
        the skip path and the readout bias alone) before it is connected; the 1997 paper
        added its memory cells once the error had stopped decreasing. 0: from the start.
        Needs skip_input. The sequences before count towards sequences to success.
    optimizer, lr, batch_size: "sgd" or "adam"; sequences per update.
    momentum: SGD's momentum (0: plain SGD, the 1997 paper's; Greff et al. search it).
    input_noise: std of Gaussian noise added to every training input (Greff et al.'s
        regulariser), drawn from the training stream; evaluation and test inputs are clean.
    loss_steps: "mean" or "sum" of the per-step errors over a sequence's target steps
        (Task.loss); "sum" matches the 1997 learning rates on tasks with a target at every
        step, where the paper updated the weights at every step.
    clip_norm: Pascanu et al.'s rescaling, g <- clip_norm g / ||g|| when ||g|| >= clip_norm.
    clip_value: clip each gradient element to [-clip_value, clip_value].
    max_sequences, max_seconds: the budget (the run also stops when the task is solved).
    eval_every: sequences between evaluations (the task's fixed sets, or eval_size fresh
        sequences drawn from a generator seeded once, so every evaluation sees the same).
    eval_batch_size: the most sequences evaluated at once (memory bound).
    checkpoint_every: sequences between checkpoints (needs out_dir; None: only at the end).
    flow_every: sequences between measurements of the error flow on a fixed probe batch
        (lstmlab.analysis.watch: gradient against lag, Lyapunov horizon, gate histograms,
        cell-path share), also before the first update and at the end; kept in out_dir's
        flow.json (None: not measured). Training is unchanged by it.
    seed: seeds the model's initial weights, the training data, evaluation and test data.
    out_dir: where the checkpoint, metrics.jsonl, config.json and result.json go.
    progress: show a tqdm bar; None: only when stderr is a terminal.
    test: measure the task's test set after training.
    """

    task: str
    task_params: dict = field(default_factory=dict)
    cell: str = "lstm"
    cell_options: dict = field(default_factory=dict)
    hidden_size: int = 8
    num_layers: int = 1
    init: str = "torch"
    forget_bias: float | None = None
    input_bias: float | None = None
    skip_input: bool = False
    connect_after: int = 0
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    input_noise: float = 0.0
    batch_size: int = 1
    loss_steps: str = "mean"
    clip_norm: float | None = None
    clip_value: float | None = None
    max_sequences: int = 100_000
    max_seconds: float | None = None
    eval_every: int = 1_000
    eval_size: int = 256
    eval_batch_size: int = 128
    checkpoint_every: int | None = 10_000
    flow_every: int | None = None
    seed: int = 0
    out_dir: str | None = None
    progress: bool | None = None
    test: bool = True

    def __post_init__(self):
        make(self.task, **self.task_params)  # raises ValueError naming a bad task or parameter
        if self.cell not in cell_names():
            raise ValueError(f"cell={self.cell!r} is not a registered cell; valid cells: {', '.join(cell_names())}")
        if not isinstance(self.cell_options, dict):
            raise ValueError(f"cell_options={self.cell_options!r} is invalid; allowed: a dict of CellSpec fields")
        spec = get_cell(self.cell).with_options(**self.cell_options)  # raises naming a bad option
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is invalid; allowed: {', '.join(OPTIMIZERS)}")
        if self.loss_steps not in LOSS_STEPS:
            raise ValueError(f"loss_steps={self.loss_steps!r} is invalid; allowed: {', '.join(LOSS_STEPS)}")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is invalid; allowed: {', '.join(INITS)}")
        for name, minimum in [
            ("hidden_size", 1),
            ("num_layers", 1),
            ("batch_size", 1),
            ("max_sequences", 1),
            ("eval_every", 1),
            ("eval_size", 1),
            ("eval_batch_size", 1),
            ("seed", 0),
            ("connect_after", 0),
        ]:
            _integer(name, getattr(self, name), minimum)
        _integer("checkpoint_every", self.checkpoint_every, 1, optional=True)
        _integer("flow_every", self.flow_every, 1, optional=True)
        if self.flow_every is not None:
            check_closed_form(spec)  # the flow measurements include the closed-form Jacobians
        _number("lr", self.lr)
        if not (
            isinstance(self.momentum, (int, float)) and not isinstance(self.momentum, bool) and 0 <= self.momentum < 1
        ):
            raise ValueError(f"momentum={self.momentum!r} is invalid; allowed: a number in [0, 1)")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"momentum={self.momentum!r} applies to optimizer='sgd' only, not {self.optimizer!r}")
        _number("input_noise", self.input_noise, strict=False)
        _number("clip_norm", self.clip_norm, optional=True)
        _number("clip_value", self.clip_value, optional=True)
        _number("max_seconds", self.max_seconds, optional=True)
        if self.forget_bias is not None:
            _number("forget_bias", self.forget_bias, minimum=float("-inf"))
        if self.input_bias is not None:
            _number("input_bias", self.input_bias, minimum=float("-inf"))
            if "i" not in spec.gates:
                raise ValueError(
                    f"input_bias={self.input_bias!r} needs a cell with an input gate; cell {self.cell!r} has none"
                )
        if not isinstance(self.skip_input, bool):
            raise ValueError(f"skip_input={self.skip_input!r} is invalid; allowed: True or False")
        if self.connect_after and not self.skip_input:
            raise ValueError(
                f"connect_after={self.connect_after!r} needs skip_input=True (until the recurrent "
                f"layer is connected the outputs come from the skip path)"
            )
        if not isinstance(self.test, bool):
            raise ValueError(f"test={self.test!r} is invalid; allowed: True or False")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ValueError(f"progress={self.progress!r} is invalid; allowed: True, False or None")

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self) -> TrainConfig:
        """The same run with every task parameter spelled out (what config.json holds)."""
        return replace(self, task_params=make(self.task, **self.task_params).params())

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields, other than the budget ones, in which two configs differ."""
        mine, theirs = self.resolved(), other.resolved()
        return [
            f.name
            for f in fields(self)
            if f.name not in BUDGET_FIELDS and getattr(mine, f.name) != getattr(theirs, f.name)
        ]
