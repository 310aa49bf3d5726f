"""`lstmlab reproduce PAPER`: a paper's experiments as trials, one per (row, arm, seed), on
Optuna storage (lstmlab.train.trials: resumable, any number of workers), and their report
(lstmlab.train.reproduce_report).

    1997      every row of Hochreiter & Schmidhuber 1997 (rows: lstmlab.train.rows1997,
              trials: lstmlab.train.paper1997): the paper's machine ("paper"), today's
              recipe ("modern"), a tanh RNN ("rnn").
    gers2000  Gers, Schmidhuber & Cummins 2000 on the continual embedded Reber grammar
              (lstmlab.train.gers2000): no forget gate, forget gate, forget gate with
              learning-rate decay; plus both nets' cell states over one stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArgumentError
from ..io import check_writable
from ..sweep.storage import check_storage, shown


# ---- what `lstmlab reproduce PAPER` runs ---------------------------------------------------
@dataclass(frozen=True)
class Paper:
    """The paper's numbers beside a (row, arm): the fraction of its trials that met the
    criterion (0-1) and how many trials it ran, its count (sequences, mean over its
    trials), wrong test sequences of test_size; None where the paper gives none."""

    fraction: float | None = None
    sequences: int | None = None
    test_errors: int | None = None
    test_size: int | None = None
    trials: int | None = None


@dataclass(frozen=True)
class Experiment:
    """A paper's reproduction: its rows (in the table's order), arms, the trial function
    ("module:function", called with (row, arm, seed, max_sequences, max_seconds)), each
    (row, arm)'s budget by name ({(row, arm): {"default": n, "paper": n}}), each row's
    setting in words, the paper's numbers ({(row, arm): Paper}), what success means and
    what a count counts (for the report), and "module:function" writing extra figures into
    a folder (or None)."""

    name: str
    title: str
    rows: tuple[str, ...]
    arms: tuple[str, ...]
    trial: str
    budgets: dict
    settings: dict
    published: dict
    criterion: str
    success: str = "sequences"  # what a solved trial's count counts
    figures: str | None = None


BUDGETS = ("default", "paper")


def budget_choice(name: str, value: str | int | None) -> str | int:
    """A trial's budget as given: "default" (also None), "paper", or an int >= 1, returned as
    such; anything else raises ArgumentError naming the argument `name`."""
    if value is None or value == "default":
        return "default"
    if value == "paper":
        return "paper"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ArgumentError(f"{name}={value!r} is invalid; allowed: 'default', 'paper' or an int >= 1")


def _paper_1997() -> Experiment:
    from . import rows1997 as p

    published = {}
    for r in p.ROWS:
        wrong, size = r.paper_test or (None, None)
        for arm in p.ARMS:
            published[(r.name, arm)] = Paper(r.paper_success, r.paper_sequences, wrong, size, r.paper_trials)
    return Experiment(
        name="1997",
        title="Hochreiter & Schmidhuber 1997",
        rows=p.ROW_NAMES,
        arms=p.ARMS,
        trial="lstmlab.train.paper1997:run_trial",
        budgets={(r.name, a): {b: p.trial_budget(r, b, a) for b in BUDGETS} for r in p.ROWS for a in p.ARMS},
        settings={r.name: ", ".join(f"{k}={v}" for k, v in r.params.items()) or "-" for r in p.ROWS},
        published=published,
        criterion=(
            "each row's stopping rule, counted as the paper did: where the criterion was a window of "
            "training sequences it also stopped on (adding, multiplication, temporal order) the window "
            "counts; where it was a check after training (2a-2c) it does not; where it was an evaluation "
            "on fixed sets (Reber, 3a-3c) the count is the sequences seen at the first evaluation that met it"
        ),
    )


GERS_ROW = "continual-reber"


def gers_trial(row: str, arm: str, seed: int, max_sequences: int | None, max_seconds: float | None) -> dict:
    """One net of Gers 2000 (lstmlab.train.gers2000.run_gers_trial) in the result format
    of `lstmlab reproduce`: solved = a perfect solution, sequences = seen = the training
    streams run; max_sequences is the most training streams."""
    from .gers2000 import run_gers_trial

    r = run_gers_trial(arm, seed, max_sequences, max_seconds)
    return {**r, "row": row, "solved": r["perfect"], "sequences": r["streams"], "seen": r["streams"]}


def gers_cell_states(out: Path) -> list[Path]:
    """The paper's evidence of why: both nets' cell states over one continual stream."""
    from .gers2000 import cell_state_traces, plot_cell_states

    path = out / "reproduce-gers2000-cell-states.png"
    plot_cell_states(cell_state_traces(), path)
    return [path]


def _gers_2000() -> Experiment:
    from . import gers2000 as g

    return Experiment(
        name="gers2000",
        title="Gers, Schmidhuber & Cummins 2000 (continual embedded Reber grammar)",
        rows=(GERS_ROW,),
        arms=g.ARMS,
        trial="lstmlab.train.reproduce:gers_trial",
        budgets={(GERS_ROW, a): dict(zip(BUDGETS, (g.DEFAULT_STREAMS, g.PAPER_STREAMS))) for a in g.ARMS},
        settings={GERS_ROW: "-"},
        published={(GERS_ROW, arm): Paper(fraction=g.PUBLISHED[arm]) for arm in g.ARMS},
        criterion=(
            "a perfect solution: after a training stream (to its first wrong prediction, or 10^6 "
            "symbols), 10 test streams of 100,000 symbols all predicted without an error"
        ),
        success="streams",
        figures="lstmlab.train.reproduce:gers_cell_states",
    )


EXPERIMENTS = {"1997": _paper_1997, "gers2000": _gers_2000}


def experiment(paper: str) -> Experiment:
    if paper not in EXPERIMENTS:
        raise ArgumentError(f"paper={paper!r} is not a reproduction; allowed: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[paper]()


def _names(option: str, given, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if given is None:
        return allowed
    given = tuple(given)
    unknown = [g for g in given if g not in allowed]
    if unknown or not given:
        raise ArgumentError(f"{option} {' '.join(unknown) or '(none)'}: not {what}; allowed: {', '.join(allowed)}")
    return tuple(a for a in allowed if a in given)  # the table's order


def budget_of(exp: Experiment, row: str, arm: str, budget) -> int:
    """A (row, arm)'s max_sequences under --budget (default, paper or a number)."""
    return budget if isinstance(budget, int) else exp.budgets[(row, arm)][budget]


def check_budget(budget):
    """--budget: "default", "paper" or a positive int (also as a string)."""
    if isinstance(budget, str) and budget.isdigit():
        budget = int(budget)
    if isinstance(budget, bool) or not (budget in BUDGETS or (isinstance(budget, int) and budget > 0)):
        raise ArgumentError(f"--budget {budget!r} is invalid; allowed: default, paper or a number of sequences > 0")
    return budget


def check_count(option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"{option} {value!r} is invalid; allowed: an int >= 1")
    return value


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'trials.db').resolve()}"


def reproduce(
    paper: str,
    rows=None,
    arms=None,
    seeds: int = 10,
    budget="default",
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    out=None,
    max_seconds: float | None = None,
    trial: str | None = None,
    command: str | None = None,
    heartbeat: int = 10,
    grace: int = 120,
    log=print,
) -> dict:
    """Run (or continue) a reproduction and write its report into `out`.

    One Optuna trial per (row, arm, seed), seeds 0..seeds-1; trials with a result in
    `storage` (default: sqlite `out`/trials.db; out default: out/reproduce-PAPER) are not
    run again. rows, arms: subsets
    (None: all). budget: "default", "paper" (each row's and arm's) or max_sequences for all.
    study: the study's name in storage (default reproduce-PAPER-budget-BUDGET).
    workers: processes, one torch thread each. command: the command line, for the report.
    trial: "module:function" in place of the paper's trial function (tests). heartbeat,
    grace: see lstmlab.train.trials.TrialSet.
    Returns {"table", "files", "missing", "errors", "seconds"}: missing are the keys
    without a result (a trial raised or a worker died; the same call runs them again).
    """
    from .reproduce_report import summarise, write_report
    from .trials import TrialSet, budget_key, resolve, run_trials, trial_errors

    exp = experiment(paper)
    rows = _names("--rows", rows, exp.rows, f"a row of {paper}")
    arms = _names("--arms", arms, exp.arms, f"an arm of {paper}")
    check_count("--seeds", seeds)
    check_count("--workers", workers)
    budget = check_budget(budget)
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ArgumentError(f"--max-seconds {max_seconds!r} is invalid; allowed: a number > 0")
    out = check_writable(out or f"out/reproduce-{paper}", "--out")
    if storage is not None:
        check_storage(storage, option="--storage", workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out)
    limits = {budget_key(row, arm): budget_of(exp, row, arm, budget) for row in rows for arm in arms}
    ts = TrialSet(
        storage=storage,
        study=study or f"reproduce-{paper}-budget-{budget}",
        keys=tuple((row, arm, seed) for row in rows for arm in arms for seed in range(seeds)),
        trial=trial or exp.trial,
        max_sequences=limits,
        max_seconds=max_seconds,
        identity={"paper": paper, "budget": budget, "max_seconds": max_seconds, "max_sequences": limits},
        heartbeat=heartbeat,
        grace=grace,
    )
    start = time.perf_counter()
    done = run_trials(ts, workers=workers, log=log)
    table = summarise(exp, ts.keys, done, limits)
    meta = {
        "paper": paper,
        "title": exp.title,
        "budget": budget,
        "max_sequences": limits,
        "max_seconds": max_seconds,
        "seeds": seeds,
        "storage": shown(storage),
        "study": ts.study,
        "criterion": exp.criterion,
        "command": command,
    }
    meta["wall_seconds"] = round(time.perf_counter() - start, 1)
    files = write_report(exp, table, done, meta, out)
    if exp.figures:
        files += resolve(exp.figures)(out)
    return {
        "table": table,
        "files": files,
        "missing": [k for k in ts.keys if k not in done],
        "errors": trial_errors(ts),
        "seconds": meta["wall_seconds"],
    }


__all__ = ["EXPERIMENTS", "Experiment", "Paper", "experiment", "gers_trial", "reproduce"]
