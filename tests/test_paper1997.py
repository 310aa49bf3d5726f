"""The 1997 rows (Hochreiter & Schmidhuber 1997, section 5 and Tables 1-11) and one trial."""

import json
from dataclasses import replace

import numpy as np
import pytest

from lstmlab.errors import ArgumentError
from lstmlab.tasks import WindowRule, make
from lstmlab.tasks.lag_distractor import ROWS as PAIRS_2C
from lstmlab.train.loop import TRAIN_DATA, seeded
from lstmlab.train.net1997 import BlockNet
from lstmlab.train.paper1997 import (
    ROWS,
    PaperRun,
    get_row,
    judge_outputs,
    paper_machine,
    run_trial,
    trial_budget,
)

# The weight counts the paper states (Table 10, column 8; Tables 1, 3, 4, 7, 9).
PAPER_WEIGHTS = {
    "1-3x2-lr0.5": 276,
    "1-4x1-lr0.1": 264,
    "2a": 10_504,
    "2b": 10_504,
    **{f"2c-q{q}-p{p}": w for (q, p), w in zip(PAIRS_2C, [364, 664, 1264, 3064, 6064, 3064, 1264, 664, 364])},
    **{f"{v}-T{T}-N{N}": 102 for v, T, N in [("3a", 100, 3), ("3a", 100, 1), ("3a", 1000, 3)]},
    **{f"{v}-T{T}-N{N}": 102 for v, T, N in [("3b", 100, 3), ("3b", 100, 1), ("3b", 1000, 1)]},
    "3c-T100-N3": 102,
    "3c-T100-N1": 102,
    "4-T100": 93,
    "4-T500": 93,
    "4-T1000": 93,
    "5-T100": 93,
    "6a": 156,
    "6b": 308,
}


def test_every_row_of_the_paper_is_there():
    assert {r.name for r in ROWS} == set(PAPER_WEIGHTS)
    assert len({r.name for r in ROWS}) == len(ROWS)
    assert {r.experiment for r in ROWS} == {"1", "2a", "2b", "2c", "3a", "3b", "3c", "4", "5", "6a", "6b"}
    assert [(r.params["q"], r.params["p"]) for r in ROWS if r.experiment == "2c"] == list(PAIRS_2C)
    assert sorted(r.params["T"] for r in ROWS if r.experiment == "4") == [100, 500, 1000]
    reber = {(r.paper.net.blocks, r.paper.net.cells_per_block, r.paper.lr) for r in ROWS if r.experiment == "1"}
    assert reber == {(3, 2, 0.5), (4, 1, 0.1)}
    assert get_row("5-T100").params == {"T": 100, "n_seq": 140}


@pytest.mark.parametrize("name", sorted(PAPER_WEIGHTS))
def test_each_net_has_the_papers_weight_count(name):
    row = get_row(name)
    assert row.paper.net.num_weights() == PAPER_WEIGHTS[name]
    assert BlockNet(**row.paper.net.block_net_kwargs()).num_weights() == PAPER_WEIGHTS[name]
    task = row.make_task()
    assert (row.paper.net.inputs, row.paper.net.outputs) == (task.input_size, task.output_size)


def test_rows_carry_the_tasks_published_numbers():
    for row in ROWS:
        published = [
            p.sequences
            for p in row.make_task().published
            if all(row.params.get(k, v) == v for k, v in p.setting.items())
        ]
        if row.experiment == "1":
            assert row.paper_sequences in published
        else:
            assert row.paper_sequences == published[0], row.name


def test_the_papers_initialisations_and_rates():
    # section 5.4: "the first input gate bias is initialized with -3.0, the second with -6.0"; lr 0.5
    add = get_row("4-T100").paper
    assert (add.input_gate_bias, add.output_gate_bias, add.weight_range, add.lr) == ((-3.0, -6.0), (), 0.1, 0.5)
    # section 5.3: input gate biases -1, -3, -5, output gate biases -2, -4, -6; lr 1.0 (3c: 0.1)
    seq = get_row("3a-T100-N3").paper
    assert (seq.input_gate_bias, seq.output_gate_bias, seq.lr) == ((-1.0, -3.0, -5.0), (-2.0, -4.0, -6.0), 1.0)
    assert get_row("3c-T100-N1").paper.lr == 0.1
    assert get_row("1-4x1-lr0.1").paper.output_gate_bias == (-1.0, -2.0, -3.0, -4.0)
    assert get_row("6b").paper.input_gate_bias == (-2.0, -4.0, -6.0)
    assert {r.paper.lr for r in ROWS if r.experiment == "2c"} == {0.01}


def test_budgets():
    assert trial_budget(get_row("2a"), "paper") == 5_040 + 10_000  # the uncounted check window
    assert trial_budget(get_row("4-T100"), "paper") == 74_000
    assert trial_budget(get_row("4-T100"), 7) == 7
    for row in ROWS:  # a default budget for every arm, never above the paper's own count
        assert set(row.budget) == {"paper", "modern", "rnn"}
        for arm, n in row.budget.items():
            assert trial_budget(row, None, arm) == n and 1 <= n <= trial_budget(row, "paper", arm)
    with pytest.raises(ArgumentError, match="budget"):
        trial_budget(get_row("6a"), 0)


def test_bad_arguments_are_named():
    with pytest.raises(ArgumentError, match="row='7'"):
        run_trial("7", "paper", 0)
    with pytest.raises(ArgumentError, match="arm='adam'"):
        run_trial("6a", "adam", 0)
    with pytest.raises(ArgumentError, match="seed=-1"):
        run_trial("6a", "paper", -1)


@pytest.mark.parametrize("arm", ["paper", "modern", "rnn"])
def test_run_trial_is_well_formed_and_deterministic(arm):
    first = run_trial("4-T100", arm, 3, max_sequences=8, test=False)  # the modern batch is 8
    again = run_trial("4-T100", arm, 3, max_sequences=8, test=False)
    json.dumps(first)
    for key in ("row", "arm", "seed", "solved", "sequences", "seen", "test_errors", "test_size", "backend", "machine"):
        assert key in first
    assert (first["row"], first["arm"], first["seed"], first["seen"], first["solved"]) == ("4-T100", arm, 3, 8, False)
    drop = lambda d: {k: v for k, v in d.items() if k not in ("wall_seconds", "cpu_seconds", "train_seconds")}
    assert drop(first) == drop(again)
    if arm == "paper":
        assert first["weights"] == 93


def test_paper_trial_tests_on_the_papers_test_set():
    result = run_trial("1-4x1-lr0.1", "paper", 0, max_sequences=3)
    assert result["test_size"] == 256 and 0 <= result["test_errors"] <= 256


def _step_by_step(row, seed: int, n: int, rule) -> tuple[int, np.ndarray]:
    """The reference: the same sequences one at a time, the rule after each, stop when it fires."""
    task = row.make_task()
    machine = paper_machine(row, seed, fast=False)
    batch = task.sample(n, seeded(seed, TRAIN_DATA))
    for i in range(n):
        one = batch.select(np.array([i]))
        targets = one.targets.double().clone()
        targets[~one.mask] = float("nan")
        out = machine.train_sequences(
            one.inputs.double().numpy(), one.lengths.numpy(), targets.numpy(), row.paper.lr, return_outputs=True
        )
        if rule.update(judge_outputs(task, out["outputs"], one)):
            return i + 1, machine.get_weights()
    raise AssertionError("the rule never fired")


def test_the_stopping_rule_rolls_back_to_the_exact_sequence():
    row = get_row("4-T100")
    chunk = 40
    seen, weights = _step_by_step(row, 0, chunk, WindowRule(1))  # the first correct sequence
    assert 1 < seen < chunk  # it fires inside the chunk: the run must roll back and replay
    run = PaperRun(row, 0, chunk=chunk, fast=False)
    run.rule = WindowRule(1)
    run.run(10 * chunk)
    assert run.solved and run.seen == seen
    np.testing.assert_array_equal(run.machine.get_weights(), weights)


def test_judging_squashed_outputs_is_the_tasks_judge():
    task = make("adding", T=100)
    batch = task.sample(5, seeded(0, TRAIN_DATA))
    y = np.full(tuple(batch.targets.shape), 0.5)
    j = judge_outputs(task, y, batch)
    target = batch.targets[batch.mask].squeeze(-1).double()
    np.testing.assert_array_equal(j.correct.numpy(), ((0.5 - target).abs() < 0.04).numpy())
    np.testing.assert_allclose(j.error.numpy(), ((0.5 - target) ** 2).numpy(), rtol=1e-15)


def test_updates_after_every_step_equal_one_per_sequence_when_only_the_end_has_a_target():
    row = get_row("4-T100")
    per_sequence, per_step = PaperRun(row, 1, fast=False), PaperRun(row, 1, fast=False)
    per_step.row = replace(row, paper=replace(row.paper, update="step"))
    batch = per_sequence.task.sample(4, seeded(1, TRAIN_DATA))
    a, b = per_sequence._train(batch), per_step._train(batch)
    np.testing.assert_allclose(a.error.numpy(), b.error.numpy(), rtol=1e-12)
    weights = per_sequence.machine.get_weights(), per_step.machine.get_weights()
    np.testing.assert_allclose(*weights, rtol=1e-12, atol=1e-14)


def test_a_window_row_reports_its_window_and_whether_it_was_reachable():
    short = run_trial("2c-q50-p50", "paper", 0, max_sequences=30)
    assert (short["test_size"], short["window_wrong"], short["criterion_reachable"]) == (None, None, False)
    assert run_trial("6a", "paper", 0, max_sequences=30, test=False)["criterion_reachable"]


def test_2a_trains_the_net_without_its_cell_until_the_error_stops_falling(monkeypatch):
    import lstmlab.train.paper1997 as paper1997

    run = PaperRun(get_row("2a"), 0)
    w_hid0, w_out0 = run.machine.weight_matrices()
    run.run_without_cell(4, None, block=2)
    w_hid, w_out = run.machine.weight_matrices()
    assert not run.connected and not run.machine.connected and run.seen == 4
    np.testing.assert_array_equal(w_hid, w_hid0)  # no error reached the cell or its gate
    np.testing.assert_array_equal(w_out[:, 0], w_out0[:, 0])  # nor its outgoing weights
    assert not np.array_equal(w_out[:, 1:], w_out0[:, 1:])  # the direct weights learned
    monkeypatch.setattr(paper1997, "STOPPED_DECREASING", 0.0)  # "stopped" at any second block
    run = PaperRun(get_row("2a"), 0)
    run.run_without_cell(100, None, block=2)
    assert run.connected and run.machine.connected and run.connected_at == run.seen == 4
