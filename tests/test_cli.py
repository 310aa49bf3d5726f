"""The command line as a new user meets it: outputs checked before the work, files with
the usual permissions, missing optional dependencies named with their extra, and bad
numbers refused with the option's name."""

import json
import os
import sys

import pytest
import torch

from lstmlab.cli import main
from lstmlab.extras import MissingExtra
from lstmlab.io import atomic_write, write_json


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_files_are_written_with_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        atomic_write(tmp_path / "sub" / "b.bin", lambda f: f.write(b"b"))
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "sub" / "b.bin"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def _never(*args, **kwargs):
    raise AssertionError("the work started before the output was checked")


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "plain-file"
    f.write_text("not a folder")
    return f


@pytest.mark.parametrize(
    "argv,target,option,why",
    [
        (["train", "adding", "--out", "{f}/run"], "lstmlab.train.cli.train", "--out", "is a file, not a folder"),
        (["train", "adding", "--out", "{f}"], "lstmlab.train.cli.train", "--out", "exists and is not a folder"),
        (["train", "adding", "--json", "{f}/r.json"], "lstmlab.train.cli.train", "--json", "is a file, not a folder"),
        (["train", "adding", "--json", "{d}"], "lstmlab.train.cli.train", "--json", "exists and is not a file"),
        (["reproduce", "1997", "--out", "{f}/x/y"], "lstmlab.train.trials.run_trials", "--out", "is a file"),
        (["flow", "--out", "{f}/flow"], "lstmlab.analysis.cli.run_study", "--out", "is a file, not a folder"),
        (["bench", "--out", "{f}/b.md"], "lstmlab.bench.run", "--out", "is a file, not a folder"),
        (["bench", "--json", "{d}"], "lstmlab.bench.run", "--json", "exists and is not a file"),
        (
            ["sweep-report", "--storage", "sqlite:///{d}/s.db", "--out", "{f}/rep"],
            "lstmlab.sweep.report.write_sweep_report",
            "--out",
            "is a file, not a folder",
        ),
    ],
)
def test_unwritable_outputs_are_refused_before_the_work(
    tmp_path, a_file, monkeypatch, capsys, argv, target, option, why
):
    (tmp_path / "s.db").write_bytes(b"")
    argv = [a.format(f=a_file, d=tmp_path) for a in argv]
    module, _, name = target.rpartition(".")
    monkeypatch.setattr(__import__(module, fromlist=[name]), name, _never)
    assert main(argv) == 2
    err = capsys.readouterr().err
    path = argv[argv.index(option) + 1]
    assert f"error: {option} {path!r} is not writable: " in err and why in err
    assert a_file.read_text() == "not a folder"


def test_missing_optuna_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    (tmp_path / "s.db").write_bytes(b"")
    assert main(["sweep", "--task", "adding", "--storage", f"sqlite:///{tmp_path}/new.db"]) == 1
    assert (
        "lstmlab sweep: error: lstmlab sweep needs optuna, which is not installed; install it with "
        "pip install 'lstmlab[sweep]'" in capsys.readouterr().err
    )
    assert main(["sweep-report", "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "r")]) == 1
    assert "needs optuna" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "task,module,top", [("digits", "sklearn.datasets", "sklearn"), ("chorales", "music21.corpus", "music21")]
)
def test_missing_task_dependency_names_the_extra(monkeypatch, capsys, task, module, top):
    from lstmlab.tasks import make

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(
        MissingExtra,
        match=rf"task '{task}' .*needs {top}, which is not installed; "
        r"install it with pip install 'lstmlab\[tasks\]'",
    ):
        make(task).sample(1, torch.Generator().manual_seed(0))
    assert issubclass(MissingExtra, ModuleNotFoundError)  # code catching the usual type still does
    assert main(["train", task, "--max-sequences", "1", "--no-progress"]) == 1
    assert f"lstmlab train: error: task '{task}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["cells", "--input-size", "-1", "--run"], "--input-size=-1 is invalid; allowed: an int >= 1"),
        (["cells", "--hidden", "0"], "--hidden=0 is invalid; allowed: an int >= 1"),
        (["train", "adding", "--lr", "inf"], "lr=inf is invalid; allowed: a finite number > 0"),
        (["train", "adding", "--lr", "nan"], "lr=nan is invalid; allowed: a finite number > 0"),
        (["train", "adding", "--lr", "-0.5"], "lr=-0.5 is invalid; allowed: a finite number > 0"),
        (["train", "adding", "--checkpoint-every", "-1"], "--checkpoint-every=-1 is invalid; allowed: an int >= 0"),
        (["train", "adding", "--resume"], "--resume needs --out"),
        (["train", "adding", "--resume", "--overwrite", "--out", "x"], "--resume and --overwrite contradict"),
        (["sweep", "--task", "adding", "--lr", "1e-3,inf"], r"lr=(0.001, inf) is invalid"),
    ],
)
def test_bad_numbers_are_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
