"""The training loop: sample, update, judge by the task's criterion, stop when solved.

    >>> from lstmlab.train import TrainConfig, train
    >>> result = train(TrainConfig("adding", {"T": 100}, cell="lstm", hidden_size=8,
    ...                            max_sequences=1000, test=False))  # doctest: +SKIP

Every sequence is judged on the outputs of the forward pass that trains on it (before
its update), as the papers did, and fed to the task's stopping rule; tasks whose rule
checks fixed sets are evaluated every `eval_every` sequences. Runs are deterministic in
the seed and resumable bit for bit from their checkpoint.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..analysis.watch import FLOW_FILE, FlowProbe
from ..io import atomic_write, write_json
from ..tasks import Batch, Judgement, make
from .config import BUDGET_FIELDS, TrainConfig
from .model import build_model

CHECKPOINT, METRICS, CONFIG, RESULT = "checkpoint.pt", "metrics.jsonl", "config.json", "result.json"
# Independent random streams derived from one seed.
TRAIN_DATA, EVAL_DATA, TEST_DATA, MODEL_INIT, FLOW_PROBE = range(5)
FLOW_PROBE_BATCH = 8  # probe sequences of --flow-every


class TrainingDiverged(RuntimeError):
    """The loss or a parameter became NaN or infinite; the run stopped."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run between two updates; the message says what was
    kept and how to continue. sequences: seen when it stopped; checkpoint: the file
    holding that point (None without out_dir)."""

    def __init__(self, message: str, sequences: int, checkpoint: Path | None):
        super().__init__(message)
        self.sequences, self.checkpoint = sequences, checkpoint


@dataclass(frozen=True)
class RunResult:
    """What a run reports (result.json). sequences_to_success: sequences seen when the
    criterion held minus those that only confirmed it (see StoppingRule.confirmation)."""

    task: str
    task_params: dict
    cell: str
    hidden_size: int
    parameters: int
    solved: bool
    stop_reason: str
    sequences_seen: int
    sequences_to_success: int | None
    updates: int
    test_errors: int | None
    test_size: int | None
    test_mean_error: float | None
    wall_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def seeded(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + stream)


def concat(parts: list[Judgement]) -> Judgement:
    return Judgement(torch.cat([p.correct for p in parts]), torch.cat([p.error for p in parts]))


def chunks(batch: Batch, size: int) -> Iterable[Batch]:
    for start in range(0, len(batch), size):
        yield batch.select(torch.arange(start, min(start + size, len(batch))))


class Trainer:
    """One run of a TrainConfig. run() trains and tests; the pieces are public for tests."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.task = make(config.task, **config.task_params)
        self.model = build_model(config, self.task, config.seed * 1000 + MODEL_INIT)
        params = self.model.parameters()
        self.optimizer = (
            torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
            if config.optimizer == "sgd"
            else torch.optim.Adam(params, lr=config.lr)
        )
        self.generator = seeded(config.seed, TRAIN_DATA)
        self.rule = self.task.stopping_rule()
        self.fixed_sets = self.task.eval_sets(seeded(config.seed, EVAL_DATA))
        self.sequences = self.updates = 0
        self.elapsed, self.solved = 0.0, False
        self.out = Path(config.out_dir) if config.out_dir else None
        self.last_checkpoint: int | None = None  # sequences seen at the last checkpoint
        self.since: list[tuple[float, Judgement]] = []  # the updates since the last evaluation
        self.wrote = False  # whether this trainer has written into out_dir (it may go on)
        self.interrupted = False  # set by the SIGINT handler while run() trains
        self.flow_records: list[dict] = []  # error-flow measurements (flow_every), oldest first
        self.probe = None
        if config.flow_every is not None:
            probe = self.task.sample(FLOW_PROBE_BATCH, seeded(config.seed, FLOW_PROBE))
            self.probe = FlowProbe(probe.inputs, seed=config.seed * 1000 + FLOW_PROBE)

    # ---- state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": self.config.resolved().to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "rule": self.rule.state_dict(),
            "sequences": self.sequences,
            "updates": self.updates,
            "elapsed": self.elapsed,
            "solved": self.solved,
            "since": [(loss, j.correct, j.error) for loss, j in self.since],
        }

    def load_state_dict(self, state: dict) -> None:
        differ = self.config.differences(TrainConfig(**state["config"]))
        if differ:
            raise ValueError(
                f"checkpoint config differs from this run's in {', '.join(differ)}; "
                f"only {', '.join(BUDGET_FIELDS)} may change"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.rule.load_state_dict(state["rule"])
        self.sequences, self.updates = state["sequences"], state["updates"]
        self.elapsed, self.solved = state["elapsed"], state["solved"]
        # "since": absent from checkpoints written before it was kept
        self.since = [(loss, Judgement(correct, error)) for loss, correct, error in state.get("since", [])]
        self.last_checkpoint = self.sequences

    def load_checkpoint(self) -> dict:
        """The state in out_dir's checkpoint; ValueError naming the file and what is wrong
        with it when it is empty, truncated or not a checkpoint of this trainer."""
        path = self.out / CHECKPOINT
        fix = "delete it, or start afresh with overwrite=True (--overwrite) instead of resume"
        if path.stat().st_size == 0:
            raise ValueError(f"checkpoint {path} is empty (0 bytes), so the run cannot be resumed; {fix}")
        try:
            state = torch.load(path, weights_only=True)
        except Exception as e:  # torch raises any of several types for a damaged file
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"checkpoint {path} cannot be read ({type(e).__name__}: {why}): it is truncated "
                f"or not a checkpoint written by lstmlab; {fix}"
            ) from None
        missing = sorted(set(self.state_dict()) - {"since"} - set(state)) if isinstance(state, dict) else None
        if missing is None or missing:
            what = f"a {type(state).__name__}" if missing is None else f"a dict without {', '.join(missing)}"
            raise ValueError(f"checkpoint {path} is not an lstmlab training checkpoint (it holds {what}); {fix}")
        try:
            TrainConfig(**state["config"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint {path} holds a config this version cannot use ({e}); {fix}") from None
        return state

    def truncate_metrics(self) -> None:
        """Drop the metrics logged after the checkpoint just loaded (they will be logged
        again as the run repeats those sequences), rewriting the file atomically."""
        path = self.out / METRICS
        if not path.exists():
            return
        text = path.read_text()
        records = []
        for line in text.splitlines():
            try:
                records.append((line, json.loads(line)))
            except json.JSONDecodeError:
                continue  # a line cut short when the run was killed
        marks = [
            i
            for i, (_, r) in enumerate(records)
            if r.get("event") == "checkpoint" and r.get("sequences") == self.sequences
        ]
        keep = (
            records[: marks[-1] + 1]
            if marks
            else [(line, r) for line, r in records if r.get("sequences", 0) <= self.sequences]
        )
        kept = "".join(line + "\n" for line, _ in keep)
        if kept != text:
            atomic_write(path, lambda f: f.write(kept.encode()))

    def load_flow(self) -> None:
        """Keep the error-flow records of out_dir's flow.json up to the checkpoint just
        loaded (those after it will be measured again), rewriting the file atomically."""
        path = self.out / FLOW_FILE
        if not path.exists():
            return
        try:
            records = json.loads(path.read_text())["records"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path} cannot be read ({type(e).__name__}: {e}); delete it to measure "
                "the error flow afresh from here, or start afresh with --overwrite"
            ) from None
        self.flow_records = [r for r in records if r["sequences"] <= self.sequences]
        self.write_flow()

    def write_flow(self) -> None:
        if self.out is None:
            return
        c = self.config
        write_json(
            self.out / FLOW_FILE,
            {
                "task": c.task,
                "task_params": self.task.params(),
                "cell": c.cell,
                "hidden_size": c.hidden_size,
                "flow_every": c.flow_every,
                "probe_batch": FLOW_PROBE_BATCH,
                "threshold": self.probe.config.threshold if self.probe else None,
                "records": self.flow_records,
            },
        )

    def measure_flow(self) -> None:
        """Measure the error flow now (once per sequence count) and store it with the run."""
        if self.probe is None or (self.flow_records and self.flow_records[-1]["sequences"] == self.sequences):
            return
        record = {"sequences": self.sequences, "updates": self.updates, **self.probe.measure(self.model.rnn)}
        self.flow_records.append(record)
        self.write_flow()

    def save_checkpoint(self) -> None:
        state = self.state_dict()
        atomic_write(self.out / CHECKPOINT, lambda f: torch.save(state, f))
        self.last_checkpoint = self.sequences
        self.log(event="checkpoint")

    def log(self, **record) -> None:
        if self.out is not None:
            record = {"sequences": self.sequences, "updates": self.updates, "seconds": round(self.elapsed, 3), **record}
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.wrote = True

    # ---- one update -----------------------------------------------------------------
    def step(self) -> tuple[float, Judgement]:
        """Train on one batch; returns its loss and the judgement of its pre-update outputs."""
        batch = self.task.sample(self.config.batch_size, self.generator)
        self.model.connected = self.sequences >= self.config.connect_after
        inputs = batch.inputs
        if self.config.input_noise:  # Greff et al.'s input noise, from the training stream
            noise = torch.randn(inputs.shape, generator=self.generator, dtype=inputs.dtype)
            inputs = inputs + self.config.input_noise * noise
        outputs = self.model(inputs)
        loss = self.task.loss(outputs, batch, self.config.loss_steps)
        if not torch.isfinite(loss):
            raise self.diverged(f"the loss is {loss.item()}")
        judgement = self.task.judge(outputs.detach(), batch)
        self.optimizer.zero_grad()
        loss.backward()
        if self.config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.config.clip_value)
        if self.config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise self.diverged("a parameter became non-finite after the update")
        self.sequences += len(batch)
        self.updates += 1
        return loss.item(), judgement

    def diverged(self, why: str) -> TrainingDiverged:
        where = f"sequence {self.sequences + self.config.batch_size:,} (update {self.updates + 1:,})"
        if self.last_checkpoint is None:
            kept = "no checkpoint was written" + ("" if self.out else " (out_dir is None)")
        else:
            kept = f"the last good checkpoint, {self.out / CHECKPOINT}, holds sequence {self.last_checkpoint:,}"
        self.log(event="diverged", why=why)
        return TrainingDiverged(f"training diverged at {where}: {why}. Stopped; {kept}.")

    # ---- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def judge_all(self, batches: Iterable[Batch]) -> Judgement:
        return concat([self.task.judge(self.model(b.inputs), b) for b in batches])

    def evaluate(self) -> dict[str, Judgement]:
        """The task's fixed sets, or eval_size sequences from a generator seeded afresh
        each time (the same sequences at every evaluation)."""
        size = self.config.eval_batch_size
        if self.fixed_sets:
            return {name: self.judge_all(chunks(b, size)) for name, b in self.fixed_sets.items()}
        g, n = seeded(self.config.seed, EVAL_DATA), self.config.eval_size
        return {"sample": self.judge_all(self.task.sample(min(size, n - k), g) for k in range(0, n, size))}

    def test(self) -> Judgement:
        g = seeded(self.config.seed, TEST_DATA)
        return self.judge_all(self.task.test_batches(g, self.config.eval_batch_size))

    # ---- the run --------------------------------------------------------------------
    def budget_left(self) -> str | None:
        c = self.config
        if self.solved:
            return "solved"
        if self.sequences >= c.max_sequences:
            return "max_sequences"
        if c.max_seconds is not None and self.elapsed >= c.max_seconds:
            return "max_seconds"
        return None

    def prepare_out(self, resume: bool, overwrite: bool) -> None:
        """Create out_dir; load its checkpoint when resuming; refuse to write over another
        run's files unless overwrite (which removes them first)."""
        if resume and overwrite:
            raise ValueError("resume=True and overwrite=True contradict each other; allowed: one of them")
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and (self.out / CHECKPOINT).exists():
            self.load_state_dict(self.load_checkpoint())
            self.truncate_metrics()
            self.load_flow()
            self.log(event="resumed")
        elif not self.wrote:
            existing = [n for n in (CHECKPOINT, METRICS, RESULT, FLOW_FILE) if (self.out / n).exists()]
            if existing and not (overwrite or resume):  # resume without a checkpoint starts afresh
                raise ValueError(
                    f"out_dir {str(self.out)!r} already holds a run ({', '.join(existing)}); "
                    "allowed: resume=True (--resume) to continue it, overwrite=True (--overwrite) "
                    "to start afresh, or another out_dir (--out)"
                )
            for name in existing:
                (self.out / name).unlink()
        write_json(self.out / CONFIG, self.config.resolved().to_dict())
        self.wrote = True

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.interrupted = True

    def interruption(self) -> TrainingInterrupted:
        where = f"sequence {self.sequences:,} (update {self.updates:,})"
        self.log(event="interrupted")
        if self.out is None:
            return TrainingInterrupted(f"stopped at {where}; nothing was saved (out_dir is None)", self.sequences, None)
        return TrainingInterrupted(
            f"stopped at {where}; checkpoint saved to {self.out / CHECKPOINT}. "
            "To continue, run the same command with --resume (train(..., resume=True))",
            self.sequences,
            self.out / CHECKPOINT,
        )

    def run(self, resume: bool = False, overwrite: bool = False) -> RunResult:
        """Train until solved or out of budget, then test. resume: continue from
        out_dir's checkpoint; overwrite: replace a run already in out_dir (without
        either, a run there is refused). Ctrl-C stops between two updates, saves a
        checkpoint (with out_dir) and raises TrainingInterrupted."""
        c = self.config
        if resume and self.out is None:
            raise ValueError("resume=True needs out_dir (where the checkpoint is)")
        if self.out is not None:
            self.prepare_out(resume, overwrite)
        show = sys.stderr.isatty() if c.progress is None else c.progress
        bar = tqdm(
            total=c.max_sequences, initial=self.sequences, unit="seq", disable=not show, desc=f"{c.task} {c.cell}"
        )
        start = time.perf_counter() - self.elapsed
        # Ctrl-C sets a flag checked between updates, so a checkpoint never holds half an update
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if main else None
        previous = signal.default_int_handler if previous is None else previous  # None: set outside Python
        self.interrupted = False
        try:
            self.measure_flow()  # before the first update (or where a resumed run stands)
            while (stop := self.budget_left()) is None:
                if self.interrupted:
                    if self.out is not None:
                        self.save_checkpoint()
                    raise self.interruption()
                before = self.sequences
                loss, judgement = self.step()
                self.since.append((loss, judgement))
                self.solved = self.rule.update(judgement)
                self.elapsed = time.perf_counter() - start
                if self.sequences // c.eval_every > before // c.eval_every:
                    self.log_interval(self.since)
                    self.since = []
                    evals = self.evaluate()
                    for name, j in evals.items():
                        self.log(
                            event="eval", set=name, correct=float(j.correct.float().mean()), error=float(j.error.mean())
                        )
                    self.solved = self.solved or self.rule.update_eval(evals)
                if c.flow_every and self.sequences // c.flow_every > before // c.flow_every:
                    self.measure_flow()
                every = c.checkpoint_every
                if self.out is not None and every and self.sequences // every > before // every:
                    self.save_checkpoint()
                bar.update(self.sequences - before)
                bar.set_postfix(loss=f"{loss:.4g}")
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
            bar.close()
        if not self.interrupted:
            self.measure_flow()  # where the run ends
        if self.out is not None:
            self.save_checkpoint()
        if self.interrupted:  # during the last update: the checkpoint above holds the end
            raise self.interruption()
        return self.finish(stop)

    def log_interval(self, since: list[tuple[float, Judgement]]) -> None:
        j = concat([j for _, j in since])
        self.log(
            event="train",
            loss=sum(l for l, _ in since) / len(since),
            correct=float(j.correct.float().mean()),
            error=float(j.error.mean()),
        )

    def finish(self, stop: str) -> RunResult:
        tested = self.test() if self.config.test else None
        success = max(0, self.sequences - self.rule.confirmation) if self.solved else None
        result = RunResult(
            task=self.config.task,
            task_params=self.task.params(),
            cell=self.config.cell,
            hidden_size=self.config.hidden_size,
            parameters=self.model.num_parameters(),
            solved=self.solved,
            stop_reason=stop,
            sequences_seen=self.sequences,
            sequences_to_success=success,
            updates=self.updates,
            test_errors=None if tested is None else int((~tested.correct).sum()),
            test_size=None if tested is None else len(tested),
            test_mean_error=None if tested is None else float(tested.error.mean()),
            wall_seconds=round(self.elapsed, 3),
        )
        self.log(
            event="done",
            **{k: v for k, v in result.to_dict().items() if k.startswith("test")},
            solved=self.solved,
            stop_reason=stop,
        )
        if self.out is not None:
            write_json(self.out / RESULT, result.to_dict())
        return result


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train, stop when solved or out of budget, test; see TrainConfig for the options.

    resume: continue from out_dir's checkpoint when there is one (the config may differ
    only in the budget fields); its metrics after that checkpoint are dropped.
    overwrite: replace a run already in out_dir (without resume or overwrite, ValueError).
    Raises TrainingDiverged on a NaN or infinite loss, TrainingInterrupted on Ctrl-C.
    """
    return Trainer(config).run(resume, overwrite)
