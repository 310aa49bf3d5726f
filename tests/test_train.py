"""The trainer: real learning on easy settings in both regimes, bit-identical resumption,
divergence handling, clipping, what a run writes, bad arguments, and the CLI."""

import argparse
import json
from dataclasses import replace

import pytest
import torch

from conftest import assert_close
from lstmlab.train import TrainConfig, Trainer, TrainingDiverged, train
from lstmlab.train.cli import parse_cell_options, parse_params, register
from lstmlab.train.model import SequenceModel
from lstmlab.train.recipes1997 import LAG_CELL

EASY = {"T": 12, "criterion": "st1"}  # two-sequence: the class sits in the first 3 of 12 steps


def events(path, kind):
    return [r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if r["event"] == kind]


# ---- learning ----------------------------------------------------------------------------
def test_paper_regime_online_sgd_learns(tmp_path):
    config = TrainConfig(
        "two-sequence",
        EASY,
        cell="lstm1997",
        init="1997",
        hidden_size=4,
        lr=1.0,
        max_sequences=4000,
        eval_every=100,
        out_dir=str(tmp_path),
        progress=False,
    )
    result = train(config)
    assert result.solved and result.stop_reason == "solved"
    assert result.updates == result.sequences_seen <= 4000  # one sequence per update
    assert result.test_size == 2560 and result.test_errors <= 3
    losses = [r["loss"] for r in events(tmp_path, "train")]
    assert losses[0] > 0.1 and losses[-1] < losses[0] / 4
    last_eval = events(tmp_path, "eval")[-1]
    assert last_eval["set"] == "test" and last_eval["correct"] == 1.0


def test_modern_regime_adam_minibatches_learns(tmp_path):
    config = TrainConfig(
        "two-sequence",
        {**EASY, "criterion": "st2"},
        cell="lstm",
        hidden_size=8,
        optimizer="adam",
        lr=0.02,
        batch_size=8,
        max_sequences=4000,
        eval_every=200,
        out_dir=str(tmp_path),
        progress=False,
    )
    result = train(config)
    assert result.solved and result.updates * 8 == result.sequences_seen
    assert result.test_errors == 0 and result.test_mean_error < 0.01  # ST2 held on a fresh test set
    losses = [r["loss"] for r in events(tmp_path, "train")]
    assert losses[-1] < losses[0] / 20


def test_a_tanh_rnn_fails_where_the_budget_is_small():
    config = TrainConfig(
        "two-sequence",
        {"T": 12},
        cell="rnn-tanh",
        hidden_size=4,
        lr=1.0,
        max_sequences=300,
        eval_every=100,
        progress=False,
        test=False,
    )
    result = train(config)
    assert not result.solved and result.stop_reason == "max_sequences" and result.sequences_to_success is None


def test_momentum_and_input_noise_are_greffs():
    """SGD momentum is torch's heavy-ball rule; input noise perturbs the training inputs
    only, from the seeded training stream (two runs with one seed agree exactly)."""
    base = TrainConfig(
        "adding", {"T": 30}, hidden_size=4, lr=0.05, max_sequences=20, eval_every=20, progress=False, test=False
    )
    t = Trainer(replace(base, momentum=0.9))
    assert t.optimizer.param_groups[0]["momentum"] == 0.9
    runs = [Trainer(replace(base, input_noise=0.5)) for _ in range(2)] + [Trainer(base)]
    for r in runs:
        r.run()
    w = [dict(r.model.named_parameters())["readout.weight"].detach() for r in runs]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    clean = Trainer(base)
    batch = clean.task.sample(1, clean.generator)  # the first training sequence, as step() draws it
    noisy = Trainer(replace(base, input_noise=0.5))
    captured = []
    noisy.model.register_forward_pre_hook(lambda m, args: captured.append(args[0].clone()))
    noisy.step()
    diff = captured[0] - batch.inputs
    assert 0.3 < diff.std().item() < 0.7  # N(0, 0.5^2) on top of the clean sequence


# ---- resumption -------------------------------------------------------------------------
RESUMABLE = TrainConfig(
    "adding",
    {"T": 30},
    cell="lstm",
    hidden_size=4,
    optimizer="adam",
    lr=0.01,
    batch_size=4,
    max_sequences=160,
    eval_every=20,
    checkpoint_every=40,
    progress=False,
    test=False,
)


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    base = replace(RESUMABLE, eval_every=40)
    whole = train(replace(base, out_dir=str(tmp_path / "whole")))
    first = train(replace(base, out_dir=str(tmp_path / "parts"), max_sequences=80))
    assert first.sequences_seen == 80
    resumed = train(replace(base, out_dir=str(tmp_path / "parts")), resume=True)
    assert resumed.sequences_seen == whole.sequences_seen == 160
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"])
    assert torch.equal(a["generator"], b["generator"]) and a["updates"] == b["updates"] == 40
    assert [r["event"] for r in events(tmp_path / "parts", "resumed")] == ["resumed"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_resume_refuses_a_different_run(tmp_path):
    config = TrainConfig(
        "adding", {"T": 30}, hidden_size=4, max_sequences=4, out_dir=str(tmp_path), progress=False, test=False
    )
    train(config)
    with pytest.raises(ValueError, match=r"differs from this run's in hidden_size"):
        train(replace(config, hidden_size=5), resume=True)
    with pytest.raises(ValueError, match=r"resume=True needs out_dir"):
        train(replace(config, out_dir=None), resume=True)


def records(path, drop=("resumed", "interrupted")):
    """metrics.jsonl without wall-clock seconds and without the given events."""
    rows = map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["event"] not in drop]


@pytest.mark.parametrize(
    "damage,why",
    [
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), r"cannot be read \(.*\): it is truncated"),
        (lambda p: p.write_text("hello"), r"cannot be read \(.*\): it is truncated or not a checkpoint"),
        (
            lambda p: torch.save({"weight": torch.ones(2)}, p),
            r"is not an lstmlab training checkpoint \(it holds a dict "
            r"without config, elapsed, generator, ",
        ),
        (lambda p: torch.save([torch.ones(2)], p), r"is not an lstmlab training checkpoint \(it holds a list\)"),
    ],
    ids=["empty", "truncated", "text", "foreign-dict", "foreign-list"],
)
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path, capsys, damage, why):
    config = replace(RESUMABLE, max_sequences=8, out_dir=str(tmp_path))
    train(config)
    path = tmp_path / "checkpoint.pt"
    damage(path)
    with pytest.raises(ValueError, match=rf"checkpoint {path} {why}.*--overwrite"):
        train(config, resume=True)
    from lstmlab.cli import main

    assert main(["train", "adding", "-p", "T=30", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"lstmlab train: error: checkpoint {path} " in err and "Traceback" not in err


def test_a_second_run_into_the_same_folder_is_refused_unless_asked(tmp_path):
    config = replace(RESUMABLE, max_sequences=40, out_dir=str(tmp_path))
    train(config)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(
        ValueError,
        match=r"already holds a run \(checkpoint.pt, metrics.jsonl, result.json\); "
        r"allowed: resume=True \(--resume\) .* overwrite=True \(--overwrite\)",
    ):
        train(replace(config, seed=1))
    assert (tmp_path / "metrics.jsonl").read_text() == before  # untouched
    train(replace(config, seed=1), overwrite=True)
    fresh = replace(config, seed=1, out_dir=str(tmp_path / "fresh"))
    train(fresh)
    assert records(tmp_path) == records(tmp_path / "fresh")  # the old run's records are gone
    with pytest.raises(ValueError, match=r"resume=True and overwrite=True contradict"):
        train(config, resume=True, overwrite=True)


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    import signal

    from lstmlab.cli import main
    from lstmlab.train.loop import TrainingInterrupted

    base = replace(RESUMABLE, max_sequences=80, checkpoint_every=1000)
    whole = Trainer(replace(base, out_dir=str(tmp_path / "whole")))
    whole.run()
    step = Trainer.step

    def step_then_ctrl_c(self):
        out = step(self)
        if self.updates == 7:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C sends, in the middle of the loop
        return out

    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    parts = replace(base, out_dir=str(tmp_path / "parts"))
    with pytest.raises(
        TrainingInterrupted,
        match=r"stopped at sequence 28 \(update 7\); checkpoint saved to "
        r".*checkpoint\.pt\. To continue, .* --resume",
    ):
        train(parts)
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    saved = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)
    assert saved["sequences"] == 28 and saved["updates"] == 7
    assert not list(tmp_path.rglob("*.tmp"))
    monkeypatch.setattr(Trainer, "step", step)
    resumed = Trainer(parts)
    resumed.run(resume=True)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    drop = ("resumed", "interrupted", "checkpoint")
    assert records(tmp_path / "parts", drop) == records(tmp_path / "whole", drop)
    # the command line: exit status 130 and how to continue
    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    argv = [
        "train",
        "adding",
        "-p",
        "T=30",
        "--hidden",
        "4",
        "--max-sequences",
        "80",
        "--no-progress",
        "--out",
        str(tmp_path / "cli"),
    ]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert (
        f"lstmlab train: interrupted: stopped at sequence 7 (update 7); checkpoint saved to "
        f"{tmp_path / 'cli' / 'checkpoint.pt'}. To continue, run the same command with --resume" in err
    )
    monkeypatch.setattr(Trainer, "step", step)
    assert main(argv + ["--resume"]) == 0
    assert json.loads((tmp_path / "cli" / "result.json").read_text())["sequences_seen"] == 80


def test_resume_drops_the_metrics_logged_after_the_checkpoint(tmp_path, monkeypatch):
    train(replace(RESUMABLE, out_dir=str(tmp_path / "whole")))
    step = Trainer.step

    def crash_at_100(self):
        if self.sequences == 100:  # past the checkpoint at 80 and the evaluation at 100
            raise RuntimeError("the machine went down")
        return step(self)

    monkeypatch.setattr(Trainer, "step", crash_at_100)
    parts = replace(RESUMABLE, out_dir=str(tmp_path / "parts"))
    with pytest.raises(RuntimeError, match="went down"):
        train(parts)
    assert [r["sequences"] for r in events(tmp_path / "parts", "eval")][-1] == 100
    with open(tmp_path / "parts" / "metrics.jsonl", "a") as f:
        f.write('{"sequences": 104, "upd')  # a record cut short by the crash
    monkeypatch.setattr(Trainer, "step", step)
    train(parts, resume=True)
    assert records(tmp_path / "parts") == records(tmp_path / "whole")
    assert [r["sequences"] for r in events(tmp_path / "parts", "resumed")] == [80]


def test_checkpoint_every_is_an_option(tmp_path):
    argv = [
        "train",
        "adding",
        "-p",
        "T=30",
        "--hidden",
        "4",
        "--max-sequences",
        "30",
        "--eval-every",
        "10",
        "--checkpoint-every",
        "10",
        "--no-progress",
        "--out",
        str(tmp_path / "a"),
    ]
    assert cli(argv) == 0
    assert [r["sequences"] for r in events(tmp_path / "a", "checkpoint")] == [10, 20, 30, 30]
    argv[argv.index("10", argv.index("--checkpoint-every"))] = "0"
    argv[-1] = str(tmp_path / "b")
    assert cli(argv) == 0
    assert [r["sequences"] for r in events(tmp_path / "b", "checkpoint")] == [30]  # only at the end
    sub = argparse.ArgumentParser(prog="lstmlab").add_subparsers(dest="command")
    register(sub)
    assert "--checkpoint-every N" in sub.choices["train"].format_help()


# ---- divergence --------------------------------------------------------------------------
def test_nan_loss_stops_with_a_clear_error():
    config = TrainConfig(
        "adding-le", {"T": 10}, cell="rnn-relu", hidden_size=4, lr=1e12, max_sequences=100, progress=False, test=False
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"diverged at sequence \d+ \(update \d+\): the loss is "
        r"(nan|inf).*no checkpoint was written \(out_dir is None\)",
    ):
        train(config)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    config = TrainConfig(
        "adding",
        {"T": 30},
        hidden_size=4,
        max_sequences=20,
        checkpoint_every=10,
        out_dir=str(tmp_path),
        progress=False,
        test=False,
    )
    trainer = Trainer(config)
    trainer.run()
    good = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        trainer.model.readout.bias.fill_(float("nan"))  # what a blown-up update leaves behind
    trainer.config = replace(config, max_sequences=40)
    with pytest.raises(
        TrainingDiverged,
        match=r"at sequence 21 \(update 21\): the loss is nan\. Stopped; "
        r"the last good checkpoint, .*checkpoint\.pt, holds sequence 20",
    ):
        trainer.run()
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert kept["sequences"] == 20
    assert all(torch.equal(kept["model"][k], good[k]) for k in good)
    assert events(tmp_path, "diverged")[-1]["why"] == "the loss is nan"


# ---- clipping ----------------------------------------------------------------------------
def grad_of(config):
    trainer = Trainer(config)
    trainer.step()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters()])


def test_gradient_clipping_by_norm_and_by_element():
    base = TrainConfig("adding", {"T": 30}, hidden_size=4, lr=1e-9, progress=False)
    g = grad_of(base)
    assert float(g.norm()) > 1e-3 and float(g.abs().max()) > 1e-4
    by_norm = grad_of(replace(base, clip_norm=1e-3))
    assert_close(by_norm, g * (1e-3 / g.norm()), tol="clip_grad_norm")
    by_value = grad_of(replace(base, clip_value=1e-4))
    torch.testing.assert_close(by_value, g.clamp(-1e-4, 1e-4))


# ---- what a run writes, and the global RNG -----------------------------------------------
def test_run_writes_resolved_config_result_and_metrics(tmp_path):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    config = TrainConfig(
        "adding", {}, hidden_size=3, max_sequences=30, eval_every=10, out_dir=str(tmp_path), progress=False, test=False
    )
    train(config)
    assert torch.equal(torch.get_rng_state(), before), "training must not draw from the global RNG"
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["task_params"] == {"T": 100} and saved["hidden_size"] == 3
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sequences_seen"] == 30 and result["test_size"] is None
    assert [r["sequences"] for r in events(tmp_path, "eval")] == [10, 20, 30]


# ---- bad arguments -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"task": "adder"}, r"task='adder' is not a registered task; valid tasks: adding, "),
        ({"task_params": {"T": 3}}, r"T=3 is invalid; allowed: an int >= 22"),
        ({"cell": "lsmt"}, r"cell='lsmt' is not a registered cell; valid cells: rnn-tanh"),
        ({"optimizer": "rmsprop"}, r"optimizer='rmsprop' is invalid; allowed: sgd, adam"),
        ({"lr": 0.0}, r"lr=0.0 is invalid; allowed: a finite number > 0"),
        ({"lr": float("inf")}, r"lr=inf is invalid; allowed: a finite number > 0"),
        ({"lr": float("nan")}, r"lr=nan is invalid; allowed: a finite number > 0"),
        ({"lr": -0.1}, r"lr=-0.1 is invalid; allowed: a finite number > 0"),
        ({"forget_bias": float("inf")}, r"forget_bias=inf is invalid; allowed: a finite number"),
        ({"max_seconds": float("inf")}, r"max_seconds=inf is invalid; allowed: a finite number > 0 or None"),
        ({"batch_size": 0}, r"batch_size=0 is invalid; allowed: an int >= 1"),
        ({"hidden_size": 2.5}, r"hidden_size=2.5 is invalid"),
        ({"clip_norm": -1.0}, r"clip_norm=-1.0 is invalid; allowed: a finite number > 0 or None"),
        ({"init": "xavier"}, r"init='xavier' is invalid; allowed: torch, 1997"),
        ({"max_seconds": 0}, r"max_seconds=0 is invalid"),
        ({"loss_steps": "total"}, r"loss_steps='total' is invalid; allowed: mean, sum"),
        ({"momentum": 1.0}, r"momentum=1.0 is invalid; allowed: a number in \[0, 1\)"),
        ({"momentum": 0.9, "optimizer": "adam"}, r"momentum=0.9 applies to optimizer='sgd' only"),
        ({"input_noise": -0.1}, r"input_noise=-0.1 is invalid; allowed: a finite number >= 0"),
        ({"connect_after": 100}, r"connect_after=100 needs skip_input=True"),
        ({"connect_after": -1, "skip_input": True}, r"connect_after=-1 is invalid; allowed: an int >= 0"),
        ({"skip_input": 1}, r"skip_input=1 is invalid; allowed: True or False"),
        ({"cell_options": {"peephole": True}}, r"cell 'lstm' has no option 'peephole'"),
        ({"cell_options": {"activation": "softsign"}}, r"activation='softsign' is not allowed"),
        ({"cell_options": ["peepholes"]}, r"cell_options=\['peepholes'\] is invalid; allowed: a dict"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**{"task": "adding", **kwargs})


# ---- CLI ---------------------------------------------------------------------------------
def cli(argv):
    parser = argparse.ArgumentParser(prog="lstmlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_parse_cell_options_converts_by_field_type_and_rejects():
    assert parse_cell_options("lstm1997", ["output_gate=false", "activation=sigmoid", "peepholes=True"]) == {
        "output_gate": False,
        "activation": "sigmoid",
        "peepholes": True,
    }
    with pytest.raises(ValueError, match=r"--cell-option output_gate='no' is invalid; allowed: true or false"):
        parse_cell_options("lstm", ["output_gate=no"])
    with pytest.raises(ValueError, match=r"cell 'gru' has no option 'peepholes'; allowed: none"):
        parse_cell_options("gru", ["peepholes=true"])
    with pytest.raises(ValueError, match=r"--cell-option 'peepholes' is invalid; allowed: KEY=VALUE"):
        parse_cell_options("lstm", ["peepholes"])


def test_parse_params_converts_and_rejects():
    assert parse_params("lag-distractor", ["q=50", "p=7"]) == {"q": 50, "p": 7}
    assert parse_params("two-sequence", ["variant=3b"]) == {"variant": "3b"}
    with pytest.raises(ValueError, match=r"--param T='x' is invalid; allowed: an int"):
        parse_params("adding", ["T=x"])
    with pytest.raises(ValueError, match=r"--param N='3' is not a parameter of task 'adding'; allowed: T"):
        parse_params("adding", ["N=3"])


def test_cli_train_writes_the_json_report(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert (
        cli(
            [
                "train",
                "two-sequence",
                "-p",
                "T=12",
                "-p",
                "criterion=st1",
                "--cell",
                "lstm1997",
                "--init",
                "1997",
                "--hidden",
                "4",
                "--lr",
                "1.0",
                "--max-sequences",
                "3000",
                "--eval-every",
                "100",
                "--no-progress",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["solved"] is True and report["test_size"] == 2560
    assert {"sequences_seen", "test_errors", "wall_seconds"} <= set(report)
    assert report["config"]["task_params"] == {"T": 12, "N": 3, "variant": "3a", "criterion": "st1"}
    assert "two-sequence lstm1997 H=4: solved after" in capsys.readouterr().out


def test_cli_reproduce_writes_a_table(tmp_path, capsys):
    """The Reber row's modern and rnn arms, one seed, 20 sequences: real training runs."""
    argv = ["reproduce", "1997", "--rows", "1-3x2-lr0.5", "--arms", "modern", "rnn", "--seeds", "1", "--budget", "20"]
    argv += ["--out", str(tmp_path)]
    assert cli(argv) == 0
    report = json.loads((tmp_path / "reproduce-1997.json").read_text())
    assert [(t["row"], t["arm"]) for t in report["table"]] == [("1-3x2-lr0.5", "modern"), ("1-3x2-lr0.5", "rnn")]
    modern, rnn = report["trials"]
    assert modern["seen"] == rnn["seen"] == 20 and modern["solved"] is False and modern["test_size"] == 256
    assert modern["cell"] == "lstm" and rnn["cell"] == "rnn-tanh"
    assert modern["machine"]["threads"] == 1 and modern["backend"] in ("lstmlab cpu", "lstmlab reference")
    table = (tmp_path / "reproduce-1997.md").read_text()
    assert "| 1-3x2-lr0.5 | - | modern | 20 | 1 | 0/1 (0%) | - | 1 at 20 | 100% (30 trials) | 8,440 | " in table
    assert "lstmlab reproduce 1997 --rows 1-3x2-lr0.5 --arms modern rnn --seeds 1 --budget 20 --out " in table
    assert (tmp_path / "reproduce-1997-1-3x2-lr0.5.png").exists()
    assert cli(argv) == 0  # again: nothing to run, the same table
    assert (tmp_path / "reproduce-1997.md").read_text().split("| row |")[1] == table.split("| row |")[1]


def test_ctrl_c_during_reproduce_says_what_happened(tmp_path, monkeypatch, capsys):
    import signal

    import optuna

    from lstmlab.cli import main

    step = Trainer.step

    def step_then_ctrl_c(self):
        out = step(self)
        if self.updates == 3:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    argv = ["reproduce", "1997", "--rows", "1-3x2-lr0.5", "--arms", "modern", "--seeds", "1", "--budget", "20"]
    assert main([*argv, "--out", str(tmp_path)]) == 130
    assert (
        "lstmlab reproduce: interrupted: the trials that finished are kept in the --storage database "
        "(default: OUT/trials.db); run the same command again to continue" in capsys.readouterr().err
    )
    assert not (tmp_path / "reproduce-1997.md").exists()
    study = optuna.load_study(study_name="reproduce-1997-budget-20", storage=f"sqlite:///{tmp_path}/trials.db")
    assert [t.state.name for t in study.get_trials()] == ["FAIL"]  # the interrupted trial, to be run again


# ---- the input-gate bias (the 1997 remedy for state drift) and what a run counts ---------
@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("lstm1997", 2), ("vanilla", 1)])
def test_input_bias_sets_every_input_gate_bias(cell, layers):
    config = TrainConfig(
        "adding",
        cell=cell,
        hidden_size=3,
        num_layers=layers,
        input_bias=-3.0,
        forget_bias=2.0 if cell != "lstm1997" else None,
        init="1997",
        progress=False,
    )
    rnn = Trainer(config).model.rnn
    i, H = rnn.spec.gates.index("i"), 3
    for k in range(layers):
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
        assert torch.equal(b_ih[i * H : (i + 1) * H], torch.full((H,), -3.0))
        assert torch.equal(b_hh[i * H : (i + 1) * H], torch.zeros(H))
        if "f" in rnn.spec.gates:  # the forget bias is untouched
            f = rnn.spec.gates.index("f")
            assert torch.equal(b_ih[f * H : (f + 1) * H], torch.full((H,), 2.0))
        o = rnn.spec.gates.index("o")  # so is the 1997 init's output-gate bias
        assert torch.equal(b_ih[o * H : (o + 1) * H], -(1.0 + torch.arange(H) % 4.0))
    plain = Trainer(replace(config, input_bias=None)).model.rnn
    assert not torch.equal(plain.bias_ih_l0[i * H : (i + 1) * H], torch.full((H,), -3.0))


@pytest.mark.parametrize("cell", ["rnn-tanh", "gru", "nig"])
def test_input_bias_needs_an_input_gate(cell):
    with pytest.raises(ValueError, match=rf"input_bias=-1.0 needs a cell with an input gate; cell '{cell}' has none"):
        TrainConfig("adding", cell=cell, input_bias=-1.0)


@pytest.mark.parametrize("counts_window, success", [(True, 10), (False, 0)])
def test_sequences_to_success_count_the_window_only_where_the_paper_did(counts_window, success):
    from lstmlab.tasks import WindowRule

    trainer = Trainer(TrainConfig("adding", {"T": 30}, hidden_size=2, max_sequences=50, progress=False, test=False))
    trainer.rule = WindowRule(10, max_wrong=10, counts_window=counts_window)  # fires when full
    result = trainer.run()
    assert result.solved and result.sequences_seen == 10 and result.sequences_to_success == success


# ---- the 1997 lag net: direct input-to-output weights, a cell connected later ------------
def test_skip_weights_and_the_disconnected_model():
    torch.manual_seed(0)
    m = SequenceModel(5, 3, 4, cell="lstm", skip_input=True).double()
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    ref = torch.nn.LSTM(5, 3, batch_first=True).double()
    ref.load_state_dict({k.removeprefix("rnn."): v for k, v in m.state_dict().items() if k.startswith("rnn.")})
    expected = ref(x)[0] @ m.readout.weight.T + m.readout.bias + x @ m.skip.weight.T
    assert_close(m(x), expected, tol="float64_closed_form")
    m.connected = False  # outputs from the skip path and the readout bias; the layer gets no gradient
    out = m(x)
    assert_close(out, x @ m.skip.weight.T + m.readout.bias, tol="float64_closed_form")
    out.sum().backward()
    assert all(p.grad is None for p in m.rnn.parameters()) and m.readout.weight.grad is None
    assert m.skip.weight.grad is not None and m.readout.bias.grad is not None
    with pytest.raises(RuntimeError, match="without skip_input must stay connected"):
        plain = SequenceModel(5, 3, 4)
        plain.connected = False
        plain(x.float())


def test_the_cell_is_connected_after_connect_after_sequences():
    config = TrainConfig(
        "lag",
        {"p": 6},
        cell="lstm1997",
        cell_options=LAG_CELL,
        hidden_size=1,
        init="1997",
        skip_input=True,
        connect_after=30,
        optimizer="adam",
        lr=0.03,
        max_sequences=60,
        progress=False,
        test=False,
    )
    t = Trainer(config)
    assert t.model.rnn.spec.output_gate is False and t.model.rnn.spec.activation == "sigmoid"
    start = {k: v.clone() for k, v in t.model.rnn.state_dict().items()}
    while t.sequences < 30:
        t.step()
    assert all(torch.equal(v, start[k]) for k, v in t.model.rnn.state_dict().items())
    assert not t.model.connected
    t.step()
    assert t.model.connected
    assert not all(torch.equal(v, start[k]) for k, v in t.model.rnn.state_dict().items())


@pytest.mark.slow
def test_the_1997_lag_net_learns_the_first_symbol():
    """Lag p = 20 with the reproduce row's recipe: after 1,500 sequences (500 before the
    cell is connected) the final symbol, which only the first one predicts, is right for
    x and y sequences, and every other output is within the paper's 0.25."""
    config = TrainConfig(
        "lag",
        {"p": 20},
        cell="lstm1997",
        cell_options=LAG_CELL,
        hidden_size=1,
        init="1997",
        skip_input=True,
        connect_after=500,
        optimizer="adam",
        lr=0.03,
        clip_norm=1.0,
        loss_steps="sum",
        max_sequences=1_500,
        progress=False,
        test=False,
    )
    t = Trainer(config)
    while t.budget_left() is None:
        t.step()
    batch = t.task.sample(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        judged = t.task.judge(t.model(batch.inputs), batch)
    first = batch.inputs[:, 0].argmax(-1)
    assert set(first.tolist()) == {19, 20} and bool(judged.correct.all())
    without_cell = Trainer(replace(config, connect_after=1_500))
    while without_cell.budget_left() is None:
        without_cell.step()
    with torch.no_grad():
        assert not without_cell.task.judge(without_cell.model(batch.inputs), batch).correct.any()
