"""`lstmlab reproduce 1997`: the 1997 rows that fit a CPU budget, each trained with an
LSTM (the 1997 cell and initialisation) and with a tanh RNN of about the same number of
weights, under the same budget; a table of the paper's numbers beside ours.

The LSTM sizes are ours, not the paper's memory-block layouts (lstmlab cells have one
cell a block): adding and temporal order 4 cells (the paper's 2 blocks x 2 cells), Reber
6 (3 x 2); lag 8, enough to also learn the p - 1 local next-symbol predictions.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..cells import get_cell
from ..tasks import make
from .config import TrainConfig
from ..io import write_json, write_text
from .loop import TrainingDiverged, train


@dataclass(frozen=True)
class Row:
    task: str
    params: dict
    hidden_size: int
    lr: float
    loss_steps: str = "mean"


# Reber: the paper's lr 0.5 with updates at every step, i.e. the per-step errors summed.
ROWS_1997 = (
    Row("adding", {"T": 100}, 4, 0.5),
    Row("lag", {"p": 100}, 8, 1.0),
    Row("temporal-order", {}, 4, 0.5),
    Row("reber", {}, 6, 0.5, "sum"),
)


def weights(cell: str, input_size: int, hidden: int, output_size: int) -> int:
    return get_cell(cell).num_parameters(input_size, hidden) + hidden * output_size + output_size


def matching_rnn_size(task, lstm_hidden: int) -> int:
    """The tanh-RNN hidden size whose weight count is closest to the LSTM's."""
    I, K = task.input_size, task.output_size
    target = weights("lstm1997", I, lstm_hidden, K)
    return min(range(1, 513), key=lambda h: abs(weights("rnn-tanh", I, h, K) - target))


def configs(row: Row, base: TrainConfig) -> tuple[TrainConfig, TrainConfig]:
    """The LSTM and the RNN config of one row."""
    task = make(row.task, **row.params)
    lstm = replace(base, task=row.task, task_params=row.params, cell="lstm1997", init="1997",
                   hidden_size=row.hidden_size, lr=row.lr if base.optimizer == "sgd" else base.lr,
                   loss_steps=row.loss_steps if base.optimizer == "sgd" else base.loss_steps)
    rnn = replace(lstm, cell="rnn-tanh", init="torch", hidden_size=matching_rnn_size(task, row.hidden_size))
    out = Path(base.out_dir) if base.out_dir else None
    name = "-".join([row.task] + [f"{k}{v}" for k, v in row.params.items()])
    return tuple(replace(c, out_dir=str(out / f"{name}-{c.cell}") if out else None) for c in (lstm, rnn))


def one_thread() -> None:
    torch.set_num_threads(1)


def run_one(config: TrainConfig) -> dict:
    try:
        return train(config).to_dict()
    except TrainingDiverged as e:
        return {"diverged": str(e), "solved": False, "cell": config.cell}


def paper_row(row: Row):
    for p in make(row.task, **row.params).published:
        if all(row.params.get(k) == v for k, v in p.setting.items()):
            return p
    return None


def reproduce_1997(base: TrainConfig, jobs: int = 1, tasks: tuple[str, ...] | None = None) -> list[dict]:
    """Run the rows (all, or those of `tasks`) with base's optimiser and budget."""
    rows = [r for r in ROWS_1997 if tasks is None or r.task in tasks]
    runs = [c for r in rows for c in configs(r, base)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, initializer=one_thread) as pool:
            results = list(pool.map(run_one, runs))
    else:
        results = [run_one(c) for c in runs]
    table = []
    for i, row in enumerate(rows):
        lstm, rnn = results[2 * i], results[2 * i + 1]
        paper = paper_row(row)
        table.append({
            "task": row.task, "setting": row.params,
            "paper_sequences": paper.sequences if paper else None,
            "paper_test_errors": None if paper is None or paper.test_errors is None
            else f"{paper.test_errors}/{paper.test_size}",
            "lstm_hidden": row.hidden_size, "lstm_solved": lstm["solved"],
            "lstm_sequences": lstm.get("sequences_to_success") if lstm["solved"] else None,
            "lstm_sequences_seen": lstm.get("sequences_seen"),
            "lstm_test_errors": None if lstm.get("test_size") is None
            else f"{lstm['test_errors']}/{lstm['test_size']}",
            "rnn_hidden": runs[2 * i + 1].hidden_size, "rnn_learned": rnn["solved"],
            "rnn_sequences_seen": rnn.get("sequences_seen"),
            "lstm_run": lstm, "rnn_run": rnn})
    return table


def markdown(table: list[dict], base: TrainConfig) -> str:
    budget = f"{base.max_sequences:,} sequences" + (f" or {base.max_seconds:g} s" if base.max_seconds else "")
    lines = [f"# Hochreiter & Schmidhuber 1997, reproduced ({base.optimizer}, batch {base.batch_size}, "
             f"budget {budget} a run, seed {base.seed})", "",
             "| task | setting | paper: sequences | paper: test errors | LSTM: sequences | LSTM: test errors "
             "| tanh RNN learned it (same budget) |", "|---|---|---|---|---|---|---|"]
    for r in table:
        seen = f"not solved in {r['lstm_sequences_seen']:,}" if r["lstm_sequences_seen"] is not None else "diverged"
        ours = f"{r['lstm_sequences']:,}" if r["lstm_solved"] else seen
        setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "-"
        paper = f"{r['paper_sequences']:,}" if r["paper_sequences"] else "-"
        rnn = "diverged" if "diverged" in r["rnn_run"] else ("yes" if r["rnn_learned"] else "no")
        lines.append(f"| {r['task']} | {setting} | {paper} | {r['paper_test_errors'] or '-'} | {ours} "
                     f"| {r['lstm_test_errors'] or '-'} | {rnn} (H={r['rnn_hidden']}) |")
    lines += ["", "LSTM: cell lstm1997, init 1997; with SGD, Reber sums the per-step errors over a string "
              "(loss_steps='sum', the paper's per-step updates). Sequences to success exclude the window "
              "that only confirmed it (the paper reports 5,040 for a 10,000-sequence criterion)."]
    return "\n".join(lines) + "\n"


def write_report(table: list[dict], base: TrainConfig, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "reproduce-1997.md", out / "reproduce-1997.json"
    write_text(md, markdown(table, base))
    write_json(js, {"config": base.to_dict(), "rows": table})
    return md, js


__all__ = ["ROWS_1997", "Row", "markdown", "reproduce_1997", "write_report"]
