"""One trial of a row of Hochreiter & Schmidhuber 1997 (the rows are `lstmlab.train.rows1997`;
their names can be imported from here too).

`run_trial(row, arm, seed)` runs one (row, arm, seed) and returns a JSON-serialisable dict.
The paper arm is a PaperRun (Machine1997, the row's stopping rule applied sequence by
sequence, the paper's test); the modern and rnn arms are a TrainConfig (`modern_config`)
trained by `lstmlab.train.loop.train`.

Counting (as `tasks.rules`): where the paper's criterion was a window of training
sequences it also stopped on (adding, multiplication, temporal order) the window counts;
where it was a check after training (2a-2c: "after training, during 10,000 successive
sequences ...") the window does not count; where it was an evaluation on fixed sets
(Reber, 3a-3c) the count is the sequences seen at the first evaluation that met it, and
evaluations run every `eval_every` sequences.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import fields, replace

import numpy as np
import torch

from ..bench import machine_label
from ..errors import ArgumentError
from ..tasks import Batch, Judgement, StoppingRule, WindowRule, make
from ..tasks.base import Task
from .config import TrainConfig
from .loop import EVAL_DATA, TEST_DATA, TRAIN_DATA, TrainingDiverged, seeded, train
from .recipes1997 import weights
from .rows1997 import (
    ARMS,
    BUDGET_NOTE,
    DEFAULT_BUDGETS,
    ROW_NAMES,
    ROWS,
    PaperArm,
    PaperNet,
    Row,
    get_row,
    row_table,
    trial_budget,
)

CHUNK_VALUES = 4_000_000  # input values generated at once by the paper arm
# 2a/2b: the error "has stopped decreasing" when a block's mean error is not 10% below the last
STOPPED_DECREASING = 0.9


def _targets_with_nan(batch: Batch) -> np.ndarray:
    t = batch.targets.to(torch.float64).clone()
    t[~batch.mask] = float("nan")
    return t.numpy()


class _Squashed:
    """A task whose outputs are already squashed (the paper's net has sigmoid output units):
    its judge applied to them as they are."""

    def __init__(self, task: Task):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs


def judge_outputs(task: Task, outputs: np.ndarray | torch.Tensor, batch: Batch) -> Judgement:
    """The task's judgement of squashed outputs (n, T, K) of the paper's net."""
    y = torch.as_tensor(np.asarray(outputs), dtype=torch.float64).nan_to_num(0.0)  # NaN after each length
    b = Batch(batch.inputs.double(), batch.targets.double(), batch.lengths, batch.mask, batch.legal)
    return type(task).judge(_Squashed(task), y, b)


def _select(j: Judgement, start: int, stop: int) -> Judgement:
    return Judgement(j.correct[start:stop], j.error[start:stop])


def paper_machine(row: Row, seed: int, fast: bool | None = None):
    """The row's Machine1997, initialised from `seed` (weights U(-r, r), the gate biases).
    fast: the C++ engine (None: when the tree has it), False: the autograd reference."""
    from .net1997 import BlockNet, Init1997, Machine1997

    names = {f.name for f in fields(BlockNet)}
    kwargs = row.paper.net.block_net_kwargs()
    missing = sorted(k for k in kwargs if k not in names)
    if missing:
        raise ArgumentError(f"BlockNet has no field(s) {missing}; row {row.name!r} needs them")
    net = BlockNet(**kwargs)
    init = Init1997(
        weight_range=row.paper.weight_range,
        input_gate_bias=row.paper.input_gate_bias,
        output_gate_bias=row.paper.output_gate_bias,
    )
    return Machine1997(net, init, seed * 1000 + 3, fast=fast)


class PaperRun:
    """The paper arm of one trial: stream sequences through Machine1997 in chunks, apply
    the row's stopping rule to each sequence's judgement in order, and when it fires inside
    a chunk roll back to the chunk's start and replay up to the stopping sequence, so the
    weights tested are those at the stop."""

    def __init__(self, row: Row, seed: int, chunk: int | None = None, fast: bool | None = None):
        self.row, self.seed = row, seed
        self.task = row.make_task()
        if chunk is None:  # about 4M input values a chunk (32 MB as float64), at most 500 sequences
            steps = self.task.sample(16, seeded(seed, EVAL_DATA)).lengths.float().mean().item()
            chunk = int(max(1, min(500, CHUNK_VALUES // (steps * self.task.input_size))))
        self.chunk = chunk
        self.machine = paper_machine(row, seed, fast=fast)
        self.generator = seeded(seed, TRAIN_DATA)
        self.rule: StoppingRule = self.task.stopping_rule()
        self.st1: StoppingRule | None = None
        if row.task == "two-sequence" and row.params.get("variant") != "3c":
            self.st1 = replace(self.task, criterion="st1").stopping_rule()
        self.eval_sets = self.task.eval_sets(seeded(seed, EVAL_DATA))
        self.seen = 0
        self.solved = False
        self.connected = not row.paper.add_cell_later
        self.connected_at: int | None = None if row.paper.add_cell_later else 0
        self.st1_seen: int | None = None

    def _train(self, batch: Batch) -> Judgement:
        xs, lengths, targets = batch.inputs.to(torch.float64).numpy(), batch.lengths.numpy(), _targets_with_nan(batch)
        out = self.machine.train_sequences(
            xs, lengths, targets, self.row.paper.lr, return_outputs=True, update=self.row.paper.update
        )
        return judge_outputs(self.task, out["outputs"], batch)

    def _evaluate(self) -> bool:
        judged = {
            k: judge_outputs(self.task, self.machine.predict(b.inputs.to(torch.float64).numpy(), b.lengths.numpy()), b)
            for k, b in self.eval_sets.items()
        }
        if self.st1 is not None and self.st1_seen is None and self.st1.update_eval(judged):
            self.st1_seen = self.seen
        return self.rule.update_eval(judged)

    def run_without_cell(self, max_sequences: int, deadline: float | None, block: int = 500) -> None:
        """2a/2b before the cell joins: Machine1997 with connected=False (the outputs see the
        input units alone, no error reaches the cell: the net without it), updated after
        every step. Stops when a block's mean squared error is not 10% below the previous
        block's; then the cell is connected with the weights it was drawn with. The
        sequences are fed to the stopping rule, which cannot fire here (the last symbol
        needs the first, so no sequence is right without the cell)."""
        self.machine.connected = False
        last = None
        while self.seen < max_sequences and not self.solved:
            if deadline is not None and time.perf_counter() > deadline:
                return
            batch = self.task.sample(min(block, max_sequences - self.seen), self.generator)
            xs, targets = batch.inputs.to(torch.float64).numpy(), _targets_with_nan(batch)
            out = self.machine.train_sequences(
                xs, batch.lengths.numpy(), targets, self.row.paper.lr, return_outputs=True, update="step"
            )
            judged = judge_outputs(self.task, out["outputs"], batch)
            for i in range(len(batch)):
                self.seen += 1
                if self.rule.update(_select(judged, i, i + 1)):
                    self.solved = True
                    return
            mean = float(np.mean(out["sq_error"]))
            if last is not None and mean >= STOPPED_DECREASING * last:
                self.machine.connected = True
                self.connected, self.connected_at = True, self.seen
                return
            last = mean

    def run(self, max_sequences: int, deadline: float | None = None) -> None:
        if not self.connected:
            self.run_without_cell(max_sequences, deadline)
        every = self.row.paper.eval_every
        while self.seen < max_sequences and not self.solved:
            if deadline is not None and time.perf_counter() > deadline:
                break
            n = min(self.chunk if every is None else every, max_sequences - self.seen)
            batch = self.task.sample(n, self.generator)
            if every is not None:
                self._train(batch)
                self.seen += n
                self.solved = self.seen % every == 0 and self._evaluate()
                continue
            snapshot, rule = self.machine.get_weights(), copy.deepcopy(self.rule)
            judged = self._train(batch)
            stop = next((i for i in range(n) if self.rule.update(_select(judged, i, i + 1))), None)
            if stop is None:
                self.seen += n
                continue
            if stop < n - 1:  # the rule fired inside the chunk: replay up to it
                self.machine.set_weights(snapshot)
                self.rule = rule
                part = batch.select(torch.arange(stop + 1))
                replayed = self._train(part)
                fired = [self.rule.update(_select(replayed, i, i + 1)) for i in range(stop + 1)]
                assert fired[-1], "the replay of a chunk must fire the rule where the first pass did"
            self.seen += stop + 1
            self.solved = True

    def test(self) -> dict:
        """The paper's test after training: 2,560 fresh sequences (Reber: its test strings);
        2a-2c have none (their check is the window)."""
        if isinstance(self.rule, WindowRule) and self.rule.confirmation:
            wrong = None if len(self.rule.correct) < self.rule.window else self.rule.wrong
            return {"test_errors": None, "test_size": None, "test_mean_error": None, "window_wrong": wrong}
        parts = [
            judge_outputs(self.task, self.machine.predict(b.inputs.to(torch.float64).numpy(), b.lengths.numpy()), b)
            for b in self.task.test_batches(seeded(self.seed, TEST_DATA))
        ]
        correct = torch.cat([p.correct for p in parts])
        error = torch.cat([p.error for p in parts])
        return {
            "test_errors": int((~correct).sum()),
            "test_size": len(correct),
            "test_mean_error": float(error.mean()),
        }


def _paper_trial(row: Row, seed: int, max_sequences: int, max_seconds: float | None, test: bool) -> dict:
    start = time.perf_counter()
    run = PaperRun(row, seed)
    run.run(max_sequences, None if max_seconds is None else start + max_seconds)
    trained = time.perf_counter() - start
    tested = run.test() if test else {}
    sequences = run.seen - run.rule.confirmation if run.solved else run.seen
    return {
        "solved": run.solved,
        "sequences": sequences,
        "seen": run.seen,
        "st1_sequences": run.st1_seen,
        "cell_added_at": run.connected_at,
        **tested,
        "weights": row.paper.net.num_weights(),
        "backend": f"Machine1997 {run.machine.backend}",
        "train_seconds": round(trained, 3),
    }


def modern_config(
    row: Row, arm: str, seed: int, max_sequences: int, max_seconds: float | None, test: bool = True
) -> TrainConfig:
    """The TrainConfig of the modern or the rnn arm (2a-2c: no test, their check is the window)."""
    lag = row.task in ("lag", "lag-noisy", "lag-distractor")
    every = row.paper.eval_every or 1_000
    config = TrainConfig(
        row.task,
        dict(row.params),
        eval_every=every,
        max_sequences=max_sequences,
        max_seconds=max_seconds,
        seed=seed,
        progress=False,
        checkpoint_every=None,
        test=test and not lag,
        **row.modern,
    )
    if arm == "modern":
        return config
    rnn = replace(
        config,
        cell="rnn-tanh",
        cell_options={},
        init="torch",
        forget_bias=None,
        input_bias=None,
        connect_after=0,
    )
    return replace(rnn, hidden_size=rnn_hidden_size(rnn, row.paper.net.num_weights()))


def rnn_hidden_size(config: TrainConfig, target: int) -> int:
    """The tanh-RNN hidden size whose model has the weight count closest to `target`."""
    task = make(config.task, **config.task_params)
    return min(range(1, 1025), key=lambda h: abs(weights(replace(config, hidden_size=h), task) - target))


def _modern_trial(row: Row, arm: str, seed: int, max_sequences: int, max_seconds: float | None, test: bool) -> dict:
    config = modern_config(row, arm, seed, max_sequences, max_seconds, test)
    try:
        r = train(config, overwrite=True).to_dict()
    except TrainingDiverged as e:
        return {"solved": False, "sequences": None, "seen": None, "diverged": str(e), "backend": "lstmlab"}
    from ..backends import get_backend

    return {
        "solved": r["solved"],
        "sequences": r["sequences_to_success"] if r["solved"] else r["sequences_seen"],
        "seen": r["sequences_seen"],
        "test_errors": r["test_errors"],
        "test_size": r["test_size"],
        "test_mean_error": r["test_mean_error"],
        "weights": r["parameters"],
        "hidden_size": config.hidden_size,
        "cell": config.cell,
        "backend": "lstmlab " + get_backend("auto", "cpu").__name__.rsplit(".", 1)[-1],
    }


def run_trial(
    row: str | Row,
    arm: str,
    seed: int,
    max_sequences: int | str | None = None,
    max_seconds: float | None = None,
    test: bool = True,
) -> dict:
    """One (row, arm, seed): train until the paper's criterion holds or the budget ends,
    then the paper's test. Returns a JSON-serialisable dict:

    row, arm, seed; solved; sequences (to success, counted as the paper did; if not
    solved, the sequences seen); seen; test_errors / test_size / test_mean_error (None where
    the row's check is its window: 2a-2c report window_wrong, the wrong sequences of the
    last 10,000, None before 10,000 were seen); st1_sequences (3a/3b);
    weights; budget (sequences allowed); criterion_reachable (False when the budget is not
    above the row's uncounted check window, 2a-2c); wall_seconds; backend; machine;
    paper_sequences, paper_test.
    max_sequences: None / "default" (the row's default budget), "paper", or an int.
    max_seconds: the training's wall-clock limit (the test after it is not limited).
    test: run the paper's test after training (False: test fields None).
    """
    row = get_row(row) if isinstance(row, str) else row
    if arm not in ARMS:
        raise ArgumentError(f"arm={arm!r} is invalid; allowed: {', '.join(map(repr, ARMS))}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ArgumentError(f"seed={seed!r} is invalid; allowed: an int >= 0")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ArgumentError(f"max_seconds={max_seconds!r} is invalid; allowed: a number > 0 or None")
    budget = trial_budget(row, max_sequences, arm)
    start, cpu_start = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if arm == "paper":
            result = _paper_trial(row, seed, budget, max_seconds, test)
        else:
            result = _modern_trial(row, arm, seed, budget, max_seconds, test)
    finally:
        torch.set_num_threads(threads)
    out = {
        "row": row.name,
        "experiment": row.experiment,
        "arm": arm,
        "seed": seed,
        "budget": budget,
        "test_errors": None,
        "test_size": None,
        "test_mean_error": None,
        "st1_sequences": None,
        "window_wrong": None,
        **result,
        "criterion_reachable": budget > row.make_task().stopping_rule().confirmation,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "machine": machine_label(),
        "paper_sequences": row.paper_sequences,
        "paper_test": None if row.paper_test is None else list(row.paper_test),
    }
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


__all__ = [
    "ARMS",
    "BUDGET_NOTE",
    "DEFAULT_BUDGETS",
    "PaperArm",
    "PaperNet",
    "PaperRun",
    "ROWS",
    "ROW_NAMES",
    "Row",
    "get_row",
    "judge_outputs",
    "modern_config",
    "paper_machine",
    "row_table",
    "run_trial",
    "trial_budget",
]
