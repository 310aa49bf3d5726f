"""`lstmlab train TASK ...` and `lstmlab reproduce PAPER`; `register(subparsers)` adds both."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from ..cells import CellSpec, get_cell
from ..cells.spec import OVERRIDABLE
from ..io import check_writable, write_json
from ..sweep.storage import shown
from ..tasks import task_names, task_params
from .config import TrainConfig
from .loop import TrainingDiverged, train
from .reproduce import EXPERIMENTS, reproduce

# --regime fills the optimiser options the user did not give.
REGIMES = {
    "paper": {"optimizer": "sgd", "batch_size": 1, "lr": 0.1},
    "modern": {"optimizer": "adam", "batch_size": 32, "lr": 1e-3},
}


def key_values(flag: str, items: list[str]) -> list[tuple[str, str]]:
    """["a=1", ...] -> [("a", "1"), ...]; an item without "=" raises naming the flag."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} {item!r} is invalid; allowed: KEY=VALUE")
        pairs.append((key, value))
    return pairs


def parse_params(task: str, items: list[str]) -> dict:
    """["T=100", ...] -> {"T": 100}, each value converted to the parameter's type."""
    types = task_params(task)
    params = {}
    for key, value in key_values("--param", items):
        if key not in types:
            raise ValueError(
                f"--param {key}={value!r} is not a parameter of task {task!r}; allowed: {', '.join(types) or 'none'}"
            )
        kind = types[key][0]
        try:
            params[key] = kind(value) if kind in (int, float) else value
        except ValueError:
            raise ValueError(
                f"--param {key}={value!r} is invalid; allowed: {'an int' if kind is int else 'a number'}"
            ) from None
    return params


def parse_cell_options(cell: str, items: list[str]) -> dict:
    """["output_gate=false", "activation=sigmoid"] -> {"output_gate": False, ...}: the
    CellSpec fields this cell's kind lets a user change, booleans as true/false."""
    kinds = {f.name: f.type for f in dataclasses.fields(CellSpec)}
    allowed = OVERRIDABLE[get_cell(cell).kind]
    options = {}
    for key, value in key_values("--cell-option", items):
        if key not in allowed:
            raise ValueError(
                f"--cell-option {key}={value!r}: cell {cell!r} has no option {key!r}; "
                f"allowed: {', '.join(allowed) or 'none'}"
            )
        if kinds[key] in (bool, "bool"):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--cell-option {key}={value!r} is invalid; allowed: true or false")
            options[key] = value.lower() == "true"
        elif kinds[key] in (int, "int"):
            try:
                options[key] = int(value)
            except ValueError:
                raise ValueError(f"--cell-option {key}={value!r} is invalid; allowed: an int") from None
        else:
            options[key] = value
    return options


def add_optimiser_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--regime",
        choices=tuple(REGIMES),
        default="paper",
        help="paper: online plain SGD, lr 0.1; modern: Adam, batch 32, lr 1e-3",
    )
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, help="sequences per update")
    p.add_argument(
        "--loss-steps",
        choices=("mean", "sum"),
        default="mean",
        help="average or add the per-step errors over a sequence (see TrainConfig)",
    )
    p.add_argument("--clip-norm", type=float, help="rescale the gradient to this norm when larger")
    p.add_argument("--clip-value", type=float, help="clip every gradient element to [-v, v]")
    p.add_argument("--max-sequences", type=int, default=100_000)
    p.add_argument("--max-seconds", type=float)
    p.add_argument("--eval-every", type=int, default=1_000, help="sequences between evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_flow_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flow-every",
        type=int,
        metavar="N",
        help="measure the error flow (gradient against lag, horizon, gate histograms) on a fixed "
        "probe batch every N sequences, into the run's flow.json; see `lstmlab flow-report`",
    )


def optimiser_options(args) -> dict:
    chosen = {k: getattr(args, k) for k in ("optimizer", "lr", "batch_size") if getattr(args, k) is not None}
    return {
        **REGIMES[args.regime],
        **chosen,
        "loss_steps": args.loss_steps,
        "clip_norm": args.clip_norm,
        "clip_value": args.clip_value,
        "max_sequences": args.max_sequences,
        "max_seconds": args.max_seconds,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "progress": False if args.no_progress else None,
    }


def _train(args) -> int:
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other; allowed: one of them")
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run directory holding the checkpoint)")
    if args.checkpoint_every < 0:
        raise ValueError(
            f"--checkpoint-every={args.checkpoint_every} is invalid; allowed: an int >= 0 (0: only at the end)"
        )
    if args.out:
        check_writable(args.out, "--out")
    if args.json:
        check_writable(args.json, "--json", folder=False)
    config = TrainConfig(
        args.task,
        parse_params(args.task, args.param),
        cell=args.cell,
        cell_options=parse_cell_options(args.cell, args.cell_option),
        hidden_size=args.hidden,
        num_layers=args.layers,
        init=args.init,
        forget_bias=args.forget_bias,
        input_bias=args.input_bias,
        skip_input=args.skip_input,
        connect_after=args.connect_after,
        out_dir=args.out,
        checkpoint_every=args.checkpoint_every or None,
        flow_every=args.flow_every,
        **optimiser_options(args),
    )
    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except TrainingDiverged as e:
        print(f"lstmlab train: {e}", file=sys.stderr)
        return 1
    report = {**result.to_dict(), "config": config.resolved().to_dict()}
    if args.json:
        write_json(Path(args.json), report)
    solved = (
        f"solved after {result.sequences_to_success:,} sequences"
        if result.solved
        else f"not solved ({result.stop_reason})"
    )
    tested = f"; test errors {result.test_errors}/{result.test_size}" if result.test_size else ""
    print(
        f"{result.task} {result.cell} H={result.hidden_size}: {solved}, {result.sequences_seen:,} "
        f"seen in {result.wall_seconds:.1f} s{tested}"
    )
    if args.flow_every and args.out:
        print(f"error flow: {Path(args.out) / 'flow.json'}; figures: lstmlab flow-report {args.out}")
    return 0


def reproduce_command(args) -> str:
    """The command line of a `lstmlab reproduce` run, for its report (a password masked)."""
    parts = ["lstmlab", "reproduce", args.paper]
    for flag, value in (("--rows", args.rows), ("--arms", args.arms)):
        if value:
            parts += [flag, *value]
    for flag, value, default in (
        ("--seeds", args.seeds, 10),
        ("--budget", args.budget, "default"),
        ("--max-seconds", args.max_seconds, None),
        ("--storage", args.storage and shown(args.storage), None),
        ("--study", args.study, None),
        ("--workers", args.workers, 1),
        ("--out", args.out, None),
    ):
        if value != default:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def _reproduce(args) -> int:
    out = args.out or f"out/reproduce-{args.paper}"
    try:
        done = reproduce(
            args.paper,
            rows=args.rows,
            arms=args.arms,
            seeds=args.seeds,
            budget=args.budget,
            storage=args.storage,
            study=args.study,
            workers=args.workers,
            out=out,
            max_seconds=args.max_seconds,
            command=reproduce_command(args),
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            "the trials that finished are kept in the --storage database (default: OUT/trials.db); "
            "run the same command again to continue"
        ) from None
    print(done["files"][0].read_text())
    print(f"written: {', '.join(map(str, done['files']))} ({done['seconds']:.0f} s)")
    for (row, arm, seed), error in done["errors"].items():
        print(f"{row} {arm} seed {seed} raised: {error}", file=sys.stderr)
    if done["missing"]:
        print(
            f"lstmlab reproduce: {len(done['missing'])} trials have no result (a trial raised or a worker "
            "died); run the same command again to run only those",
            file=sys.stderr,
        )
        return 1
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on a task until solved or out of budget")
    p.add_argument("task", help="one of: " + ", ".join(task_names()))
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task parameter, e.g. -p T=1000 (repeatable)",
    )
    p.add_argument("--cell", default="lstm")
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--init", choices=("torch", "1997"), default="torch")
    p.add_argument("--forget-bias", type=float)
    p.add_argument(
        "--input-bias", type=float, help="initial input-gate bias (the 1997 remedy for state drift, e.g. -3)"
    )
    p.add_argument(
        "--cell-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a field of the cell, e.g. --cell-option output_gate=false (repeatable)",
    )
    p.add_argument(
        "--skip-input",
        action="store_true",
        help="direct input-to-output weights beside the readout (the 1997 lag nets')",
    )
    p.add_argument(
        "--connect-after",
        type=int,
        default=0,
        metavar="N",
        help="train N sequences before connecting the recurrent layer (needs --skip-input)",
    )
    add_optimiser_options(p)
    p.add_argument("--out", help="run directory: checkpoint, metrics.jsonl, config.json, result.json")
    p.add_argument(
        "--resume", action="store_true", help="continue from --out's checkpoint (metrics logged after it are dropped)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --out (without --resume or this, one there is refused)",
    )
    every = TrainConfig.__dataclass_fields__["checkpoint_every"].default
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=every,
        metavar="N",
        help="sequences between checkpoints in --out (default %(default)s; 0: only at the end); "
        "Ctrl-C also saves one, then exits with status 130",
    )
    p.add_argument("--json", help="write the result (solved, sequences_seen, test_errors, ...) here")
    add_flow_option(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "reproduce",
        help="reproduce a paper's experiments over seeds, as resumable trials",
        description="One trial per (row, arm, seed), stored in an Optuna database: running the same "
        "command again continues (finished trials are not run again; a trial whose worker died is). "
        "Writes reproduce-PAPER.md, .json and a figure per row into --out.",
    )
    p.add_argument(
        "paper",
        choices=tuple(EXPERIMENTS),
        help="1997: every row of Hochreiter & Schmidhuber 1997 (arms paper, modern, rnn); gers2000: Gers et "
        "al. 2000's continual embedded Reber grammar (arms no-forget, forget, forget-decay)",
    )
    p.add_argument(
        "--rows",
        nargs="+",
        metavar="ROW",
        help="a subset of the rows, e.g. 4-T100 6a (default: all; a wrong name lists them)",
    )
    p.add_argument("--arms", nargs="+", metavar="ARM", help="a subset of the arms (default: all)")
    p.add_argument("--seeds", type=int, default=10, help="trials per row and arm: seeds 0..N-1 (default 10)")
    p.add_argument(
        "--budget",
        default="default",
        help="sequences (gers2000: training streams) a trial may run: default (each row's, sized for the "
        "whole reproduction), paper (each row's paper-sized budget) or a number for every row",
    )
    p.add_argument("--max-seconds", type=float, help="wall-clock limit of each trial")
    p.add_argument(
        "--storage",
        help="where the trials live: sqlite:///FILE, or postgresql://USER:PASS@HOST/DB for workers on "
        "many machines (default: sqlite OUT/trials.db)",
    )
    p.add_argument(
        "--study",
        help="the study's name in --storage (default reproduce-PAPER-budget-BUDGET); another name starts afresh",
    )
    p.add_argument("--workers", type=int, default=1, help="processes on this machine, one torch thread each")
    p.add_argument("--out", help="where the report goes (default out/reproduce-PAPER)")
    p.set_defaults(func=_reproduce)
