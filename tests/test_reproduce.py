"""`lstmlab reproduce 1997`: the rows' configs, the matched tanh RNN, the budget, one thread
per run, and the table (the CLI end to end is in test_train.py)."""

import dataclasses

import pytest
import torch

from lstmlab.tasks import make
from lstmlab.train import build_model, reproduce
from lstmlab.train.reproduce import ROWS_1997, Budget, configs, markdown, reproduce_1997

OPTIMISER = (
    "optimizer",
    "lr",
    "momentum",
    "batch_size",
    "loss_steps",
    "clip_norm",
    "clip_value",
    "max_sequences",
    "max_seconds",
    "eval_every",
    "seed",
    "skip_input",
    "connect_after",
)


def test_the_rows_are_the_issue_s_and_each_has_its_reasons():
    assert [(r.task, r.params) for r in ROWS_1997] == [
        ("adding", {"T": 100}),
        ("lag", {"p": 100}),
        ("temporal-order", {}),
        ("reber", {}),
    ]
    for row in ROWS_1997:
        assert row.why and row.budget > 0


@pytest.mark.parametrize("row", ROWS_1997, ids=lambda r: r.task)
def test_rnn_matches_the_lstm_in_weights_and_shares_optimiser_and_budget(row):
    lstm, rnn = configs(row, Budget())
    task = make(row.task, **row.params)
    n_lstm = build_model(lstm, task, 0).num_parameters()
    n_rnn = build_model(rnn, task, 0).num_parameters()
    assert abs(n_rnn - n_lstm) <= 0.03 * n_lstm
    assert rnn.cell == "rnn-tanh" and rnn.forget_bias is None and rnn.input_bias is None
    assert all(getattr(lstm, k) == getattr(rnn, k) for k in OPTIMISER)
    assert lstm.max_sequences == row.budget and lstm.task_params == row.params


def test_budget_overrides_every_row_and_names_the_run_directories(tmp_path):
    budget = Budget(max_sequences=20, max_seconds=5.0, seed=3, out_dir=str(tmp_path))
    lstm, rnn = configs(ROWS_1997[0], budget)
    assert (
        (lstm.max_sequences, lstm.max_seconds, lstm.seed)
        == (20, 5.0, 3)
        == (rnn.max_sequences, rnn.max_seconds, rnn.seed)
    )
    assert lstm.out_dir.endswith("adding-T100-lstm") and rnn.out_dir.endswith("adding-T100-rnn-tanh")


def test_runs_go_one_after_another_on_one_thread(monkeypatch):
    seen = []

    def fake_train(config, overwrite=False):
        assert overwrite  # a reproduction starts every run afresh, also in a folder used before
        seen.append((config.cell, torch.get_num_threads()))
        raise reproduce.TrainingDiverged("stopped by the test")

    monkeypatch.setattr(reproduce, "train", fake_train)
    before = torch.get_num_threads()
    table = reproduce_1997(Budget(max_sequences=4), tasks=("reber", "adding"))
    assert seen == [("lstm", 1), ("rnn-tanh", 1), ("lstm", 1), ("rnn-tanh", 1)]
    assert torch.get_num_threads() == before
    assert [r["task"] for r in table] == ["adding", "reber"]  # the table's order, not the argument's
    text = markdown(table, Budget(max_sequences=4))
    assert "| adding | T=100 | 74,000 | 1/2560 | diverged | - | diverged, H=34 |" in text


def test_a_solved_row_reports_sequences_tests_and_the_config():
    row = ROWS_1997[2]  # temporal order
    lstm, rnn = configs(row, Budget())
    run = {
        "solved": True,
        "sequences_to_success": 3603,
        "sequences_seen": 3603,
        "test_errors": 0,
        "test_size": 2560,
        "wall_total": 5.0,
    }
    failed = {
        "solved": False,
        "sequences_to_success": None,
        "sequences_seen": 31390,
        "test_errors": 2560,
        "test_size": 2560,
        "wall_total": 40.0,
    }
    r = reproduce.table_row(row, lstm, rnn, run, failed)
    assert r["fewer_than_paper"] is True and r["lstm_test_errors"] == "0/2560"
    assert r["lstm_config"]["input_bias"] == -3.0 and r["rnn_config"]["cell"] == "rnn-tanh"
    line = [x for x in markdown([r], Budget()).splitlines() if x.startswith("| temporal-order")][0]
    assert line == (
        "| temporal-order | - | 31,390 | 1/2560 | 3,603 | 0/2560 | no (31,390 seen; test 2560/2560 "
        "wrong), H=35 | 5 / 40 | lstm H=16, forget bias 5, input bias -3, adam lr 0.003, batch 1 |"
    )


def test_rows_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ROWS_1997[0].budget = 1
