"""`lstmlab reproduce`: the modern recipe's rows, the trials on Optuna storage (resume, a
worker killed mid-trial, two workers, a trial that raises, heartbeats from another machine,
PostgreSQL), the report's numbers and figure, and the arguments refused before any work."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from lstmlab.cli import main
from lstmlab.train import reproduce as reproduce_module
from lstmlab.train.recipes1997 import RECIPES_1997
from lstmlab.train.reproduce import experiment, reproduce
from lstmlab.train.reproduce_report import markdown, summarise, table_line, write_report
from lstmlab.train.trials import TrialSet, claim, make_storage, open_study

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---- the modern recipe's rows (the modern arm's configuration where it was searched) ------------
def test_the_rows_are_the_issue_s_and_each_has_its_reasons():
    assert [(r.task, r.params) for r in RECIPES_1997] == [
        ("adding", {"T": 100}),
        ("lag", {"p": 100}),
        ("temporal-order", {}),
        ("reber", {}),
    ]
    for row in RECIPES_1997:
        assert row.why and row.budget > 0


def test_rows_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RECIPES_1997[0].budget = 1


# ---- trials ------------------------------------------------------------------------------------
# A trial function for the tests: its result follows from the key (seeds 2, 5, ... fail), and
# each call appends "row arm seed" to the file LSTMLAB_TEST_CALLS names.
def fake_trial(row, arm, seed, max_sequences, max_seconds):
    with open(os.environ["LSTMLAB_TEST_CALLS"], "a") as f:
        f.write(f"{row} {arm} {seed}\n")
    meet = os.environ.get("LSTMLAB_TEST_MEET")
    if meet:  # hold each trial until two worker processes have started one (60 s at most)
        with open(meet, "a") as f:
            f.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + 60
        while len(set(open(meet).read().split())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    if os.environ.get("LSTMLAB_TEST_RAISE") == f"{arm} {seed}":
        raise RuntimeError(f"seed {seed} raised on purpose")
    solved = seed % 3 != 2
    count = 100 * (seed + 1) + (7 if arm == "rnn" else 0)
    return {
        "solved": solved,
        "sequences": count if solved else max_sequences,
        "seen": count if solved else max_sequences,
        "test_errors": seed,
        "test_size": 256,
        "wall_seconds": 0.5,
        "backend": "fake",
    }


@pytest.fixture
def calls(tmp_path, monkeypatch):
    """The (row, arm, seed) fake_trial was called with, in order, since the last read."""
    path = tmp_path / "calls.txt"
    path.touch()
    monkeypatch.setenv("LSTMLAB_TEST_CALLS", str(path))

    def read():
        lines = path.read_text().splitlines()
        path.write_text("")
        return [(r, a, int(s)) for r, a, s in (line.split() for line in lines)]

    return read


def run(tmp_path, **kw):
    args = dict(rows=["6a"], arms=["paper", "rnn"], seeds=3, out=tmp_path / "out", trial="test_reproduce:fake_trial")
    args.update(kw)
    return reproduce("1997", log=lambda *_: None, **args)


def study_trials(url, name="reproduce-1997-budget-default"):
    """{number: (state, user attrs)} of every trial of the study."""
    study = optuna.load_study(study_name=name, storage=url)
    return {t.number: (t.state.name, t.user_attrs) for t in study.get_trials()}


def keys(arms=("paper", "rnn"), seeds=range(3), row="6a"):
    return [(row, a, s) for a in arms for s in seeds]


def test_a_reproduction_run_again_runs_no_finished_trial(tmp_path, calls):
    first = run(tmp_path)
    assert calls() == keys()
    assert first["missing"] == [] and first["errors"] == {}
    url = f"sqlite:///{tmp_path / 'out' / 'trials.db'}"
    stored = study_trials(url)
    again = run(tmp_path)
    assert calls() == []  # nothing re-run
    assert study_trials(url) == stored and again["table"] == first["table"]
    more = run(tmp_path, seeds=4)  # more seeds: only the new ones run
    assert calls() == keys(seeds=[3])
    assert [line["trials"] for line in more["table"]] == [4, 4]


def test_the_default_storage_is_a_sqlite_file_in_out_and_results_carry_their_machine(tmp_path, calls):
    done = run(tmp_path, arms=["paper"], seeds=1)
    result = json.loads((tmp_path / "out" / "reproduce-1997.json").read_text())
    (trial,) = result["trials"]
    assert (trial["row"], trial["arm"], trial["seed"], trial["backend"]) == ("6a", "paper", 0, "fake")
    m = trial["machine"]
    assert m["threads"] == 1 and m["torch"] == __import__("torch").__version__ and m["cpu"]
    assert result["machines"] == {"m1": f"fake backend, {m['cpu']}, torch {m['torch']}, 1 thread"}
    assert done["files"][0] == tmp_path / "out" / "reproduce-1997.md"


def test_a_trial_that_raises_is_reported_and_retried_by_the_next_command_only(tmp_path, calls, monkeypatch):
    monkeypatch.setenv("LSTMLAB_TEST_RAISE", "rnn 1")
    first = run(tmp_path)
    assert calls() == keys()  # raised once, not retried in a loop
    assert first["missing"] == [("6a", "rnn", 1)]
    assert first["errors"] == {("6a", "rnn", 1): "RuntimeError: seed 1 raised on purpose"}
    assert "**Incomplete**: 6a rnn 2 of 3 trials have a result" in first["files"][0].read_text()
    monkeypatch.delenv("LSTMLAB_TEST_RAISE")
    second = run(tmp_path)
    assert calls() == [("6a", "rnn", 1)] and second["missing"] == [] and second["errors"] == {}


def test_a_key_two_workers_claim_at_once_runs_once(tmp_path):
    ts = TrialSet(f"sqlite:///{tmp_path}/c.db", "c", (("6a", "paper", 0),), "test_reproduce:fake_trial")
    study = open_study(make_storage(ts), ts)
    first = claim(study, ("6a", "paper", 0))
    second = claim(study, ("6a", "paper", 0))  # another worker that chose the same key
    assert first is not None and second is None
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL"]
    assert trials[1].user_attrs["duplicate"] == first.number


def test_a_trial_whose_heartbeats_lapsed_on_another_machine_runs_again(tmp_path, calls):
    url = f"sqlite:///{tmp_path}/h.db"
    run(tmp_path, arms=["rnn"], seeds=1, storage=url)  # the study, with one trial done
    assert calls() == [("6a", "rnn", 0)]
    storage = make_storage(TrialSet(url, "", (), "", heartbeat=1, grace=2))
    study = optuna.load_study(study_name="reproduce-1997-budget-default", storage=storage)
    t = claim(study, ("6a", "paper", 0))  # a worker elsewhere: one heartbeat, then silence
    study._storage.set_trial_user_attr(t._trial_id, "owner", {"host": "elsewhere", "pid": 1, "started": "1"})
    time.sleep(2.5)  # no heartbeat for longer than grace: its worker is taken for dead
    done = run(tmp_path, arms=["paper"], seeds=1, storage=url, heartbeat=1, grace=2)
    assert calls() == [("6a", "paper", 0)] and done["missing"] == []
    assert [s for s, _ in study_trials(url).values()] == ["COMPLETE", "FAIL", "COMPLETE"]


def test_a_study_is_continued_only_with_its_settings(tmp_path, calls, monkeypatch):
    run(tmp_path, seeds=1, max_seconds=60.0)
    with pytest.raises(ValueError, match=r"with other settings \(max_seconds: 60.0 -> 30.0\); allowed: the same"):
        run(tmp_path, seeds=1, max_seconds=30.0)
    run(tmp_path, seeds=1, budget=50)  # another budget is another study in the same file
    assert len(calls()) == 4
    run(tmp_path, rows=["6a", "6b"], seeds=1, max_seconds=60.0)  # a row added: its budget joins the study's
    assert calls() == [("6b", "paper", 0), ("6b", "rnn", 0)]
    exp = experiment("1997")
    changed = dataclasses.replace(exp, budgets={**exp.budgets, ("6b", "rnn"): {"default": 123, "paper": 1}})
    monkeypatch.setitem(reproduce_module.EXPERIMENTS, "1997", lambda: changed)  # the code's budget for 6b changed
    default = exp.budgets[("6b", "rnn")]["default"]
    with pytest.raises(ValueError, match=rf"\(max_sequences\['6b/rnn'\]: {default} -> 123\)"):
        run(tmp_path, rows=["6a", "6b"], seeds=1, max_seconds=60.0)


# The victim: a trial function that, for one key, writes its worker's pid to victim.pid and
# waits to be killed (300 s at most, then fails loudly); only the first time, so that the
# worker that takes the trial over finishes it.
VICTIM = """
import os, time
from pathlib import Path

HERE = Path(os.environ["LSTMLAB_TEST_DIR"])


def trial(row, arm, seed, max_sequences, max_seconds):
    with open(HERE / "victim-calls.txt", "a") as f:
        f.write(f"{row} {arm} {seed} {os.getpid()}\\n")
    if seed == int(os.environ["LSTMLAB_TEST_VICTIM"]):
        try:
            os.close(os.open(HERE / "victim.claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass  # the trial run again, after its first worker was killed
        else:
            (HERE / "victim.tmp").write_text(str(os.getpid()))
            os.replace(HERE / "victim.tmp", HERE / "victim.pid")
            time.sleep(300)
            raise RuntimeError("the victim was never killed")
    time.sleep(0.2)
    return {"solved": True, "sequences": 10 * (seed + 1), "seen": 10 * (seed + 1), "wall_seconds": 0.2}
"""

DRIVER = """
import sys
from lstmlab.train.reproduce import reproduce

done = reproduce("1997", rows=["6a"], arms=["paper"], seeds=4, out=sys.argv[1], workers=int(sys.argv[2]),
                 trial="victim:trial")
print("missing", done["missing"])
"""


def wait_for(what, check, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"waited {timeout:.0f} s for {what}")


def start_driver(tmp_path, workers, victim):
    (tmp_path / "victim.py").write_text(VICTIM)
    (tmp_path / "victim-calls.txt").touch()
    env = {
        **os.environ,
        "LSTMLAB_TEST_DIR": str(tmp_path),
        "LSTMLAB_TEST_VICTIM": str(victim),
        "PYTHONPATH": os.pathsep.join([SRC, str(tmp_path)]),
    }
    cmd = [sys.executable, "-c", DRIVER, str(tmp_path / "out"), str(workers)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


def calls_of(tmp_path):
    return [
        (r, a, int(s), int(p))
        for r, a, s, p in (x.split() for x in (tmp_path / "victim-calls.txt").read_text().splitlines())
    ]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_only_its_trial(tmp_path, calls):
    proc = start_driver(tmp_path, workers=1, victim=3)  # the last key: the others are done by then
    url = f"sqlite:///{tmp_path / 'out' / 'trials.db'}"
    try:
        pid = int(
            wait_for(
                "the victim's trial",
                lambda: (tmp_path / "victim.pid").exists() and (tmp_path / "victim.pid").read_text(),
            )
        )
        os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = study_trials(url)
    assert [(s, a["seed"]) for s, a in before.values()] == [
        ("COMPLETE", 0),
        ("COMPLETE", 1),
        ("COMPLETE", 2),
        ("RUNNING", 3),
    ]
    log = []
    done = reproduce(
        "1997",
        rows=["6a"],
        arms=["paper"],
        seeds=4,
        out=tmp_path / "out",
        trial="test_reproduce:fake_trial",
        log=log.append,
    )
    assert calls() == [("6a", "paper", 3)]  # only the killed trial runs again
    assert log[0] == "trials [3] were left RUNNING by workers that are gone: marked FAIL, to be run again"
    after = study_trials(url)
    assert {n: after[n] for n in (0, 1, 2)} == {n: before[n] for n in (0, 1, 2)}  # results kept
    assert after[3][0] == "FAIL" and after[4][0] == "COMPLETE" and done["missing"] == []
    assert [line["sequences"] for line in done["table"]] == [
        {"median": 25, "min": 10, "max": 400}
    ]  # 10, 20, 30 kept; 400 (fake_trial)


@pytest.mark.slow
def test_two_workers_one_killed_the_other_takes_its_trial_over(tmp_path):
    proc = start_driver(tmp_path, workers=2, victim=1)
    url = f"sqlite:///{tmp_path / 'out' / 'trials.db'}"
    try:
        pid = int(
            wait_for(
                "the victim's trial",
                lambda: (tmp_path / "victim.pid").exists() and (tmp_path / "victim.pid").read_text(),
            )
        )
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert f"workers that did not finish cleanly (pid, exit code): [({pid}, -9)]" in out
    assert "missing []" in out
    trials = study_trials(url)
    victim = [s for s, a in trials.values() if a["seed"] == 1]
    assert sorted(victim) == ["COMPLETE", "FAIL"]
    assert sorted(s for s, a in trials.values() if a["seed"] != 1) == ["COMPLETE"] * 3
    runs = calls_of(tmp_path)
    assert sorted(k[:3] for k in runs) == sorted(keys(arms=("paper",), seeds=(0, 1, 1, 2, 3)))
    (retry,) = [p for r, a, s, p in runs if s == 1 and p != pid]
    assert len({p for *_, p in runs}) == 2 and retry != pid  # the other worker ran it again


@pytest.mark.slow
def test_a_reproduction_on_postgresql_continues(tmp_path, calls, postgres_url):
    first = run(tmp_path, storage=postgres_url, study="resume", seeds=2)
    assert calls() == keys(seeds=range(2)) and first["missing"] == []
    second = run(tmp_path, storage=postgres_url, study="resume", seeds=2, workers=1)
    assert calls() == [] and second["table"] == first["table"]
    assert "postgresql+psycopg2://lstmlab@127.0.0.1:" in first["files"][0].read_text()


@pytest.mark.slow
def test_two_workers_on_postgresql_run_every_trial_once(tmp_path, calls, postgres_url, monkeypatch):
    # the trials are instant: without a meeting, one worker could run them all before the
    # other has started (it did, on a loaded machine)
    monkeypatch.setenv("LSTMLAB_TEST_MEET", str(tmp_path / "meet.txt"))
    done = run(tmp_path, storage=postgres_url, study="two-workers", seeds=4, workers=2)
    assert sorted(calls()) == sorted(keys(seeds=range(4))) and done["missing"] == []
    trials = study_trials(postgres_url, "two-workers").values()
    complete = [(a["row"], a["arm"], a["seed"]) for s, a in trials if s == "COMPLETE"]
    assert sorted(complete) == sorted(keys(seeds=range(4)))
    assert len({a["owner"]["pid"] for s, a in trials if s == "COMPLETE"}) == 2  # both workers ran trials


@pytest.mark.slow
def test_gers2000_reports_perfect_nets_per_arm_and_plots_the_cell_states(tmp_path, calls):
    done = reproduce("gers2000", seeds=3, out=tmp_path, trial="test_reproduce:fake_trial", log=lambda *_: None)
    assert calls() == [("continual-reber", a, s) for a in ("no-forget", "forget", "forget-decay") for s in range(3)]
    assert [f.name for f in done["files"]] == [
        "reproduce-gers2000.md",
        "reproduce-gers2000.json",
        "reproduce-gers2000-continual-reber.png",
        "reproduce-gers2000-cell-states.png",
    ]
    text = done["files"][0].read_text()
    assert "| continual-reber | - | forget-decay | 2,000 | 3 | 2/3 (67%) | 150 (100-200) | 1 at 2,000 | 62% |" in text
    assert "| streams to success: median (min-max) | unsolved: streams run |" in text
    assert done["files"][3].read_bytes()[:4] == b"\x89PNG"


# ---- the report ----------------------------------------------------------------------------------
def result(solved, sequences, seen=None, errors=0, backend="cpu", cpu="CPU A"):
    return {
        "solved": solved,
        "sequences": sequences,
        "seen": seen or sequences,
        "test_errors": errors,
        "test_size": 2560,
        "wall_seconds": 1.0,
        "backend": backend,
        "machine": {"cpu": cpu, "torch": "2.9", "threads": 1},
    }


HAND_MADE = {
    ("6a", "modern", 0): result(True, 3603),
    ("6a", "modern", 1): result(True, 4989, errors=1),
    ("6a", "modern", 2): result(True, 5327),
    ("6a", "modern", 3): result(True, 3976, cpu="CPU B"),
    ("6a", "modern", 4): result(False, 31390, errors=2560),
    ("6a", "rnn", 0): result(False, 31390, errors=2560, backend="reference"),
    ("6a", "rnn", 1): result(False, 20000, errors=2500, backend="reference"),
}


def hand_made_report():
    exp = experiment("1997")
    keys = tuple(HAND_MADE) + (("6a", "rnn", 2),)  # planned, without a result
    table = summarise(exp, keys, HAND_MADE, {"6a/modern": 31390, "6a/rnn": 31390})
    meta = {
        "paper": "1997",
        "title": exp.title,
        "budget": "default",
        "max_sequences": {"6a/modern": 31390, "6a/rnn": 31390},
        "max_seconds": None,
        "seeds": 5,
        "storage": "sqlite:///x.db",
        "study": "s",
        "criterion": exp.criterion,
        "command": "lstmlab reproduce 1997 --rows 6a --seeds 5",
        "wall_seconds": 12.0,
    }
    return exp, table, meta


def test_the_report_s_numbers_are_the_spread_over_seeds():
    exp, table, meta = hand_made_report()
    modern, rnn = table
    # solved: 3603, 3976, 4989, 5327 -> median (3976 + 4989) / 2
    assert (modern["trials"], modern["solved"], modern["fraction"]) == (5, 4, 0.8)
    assert modern["sequences"] == {"median": 4482.5, "min": 3603, "max": 5327}
    assert modern["unsolved_sequences"] == [31390]
    assert modern["test_errors"] == {"median": 0, "min": 0, "max": 2560}
    assert modern["paper"]["sequences"] == 31390 and modern["paper"]["test_errors"] == 1
    assert modern["machines"] == ["m1", "m2"] and rnn["machines"] == ["m3"]
    assert (rnn["planned"], rnn["trials"], rnn["solved"], rnn["sequences"]) == (3, 2, 0, None)
    assert rnn["unsolved_sequences"] == [20000, 31390]
    text = markdown(exp, table, HAND_MADE, meta)
    assert (
        "| 6a | - | modern | 31,390 | 5 | 4/5 (80%) | 4,482.5 (3,603-5,327) | 1 at 31,390 | - (20 trials) | 31,390 "
        "| 0 (0-2,560) / 2,560 | 1/2560 | m1, m2 |" in text
    )
    assert (
        "| 6a | - | rnn | 31,390 | 2 of 3 | 0/2 (0%) | - | 2 at 20,000-31,390 | - (20 trials) | 31,390 "
        "| 2,530 (2,500-2,560) / 2,560 | 1/2560 | m3 |" in text
    )
    assert "- m1: cpu backend, CPU A, torch 2.9, 1 thread (4 trials)" in text
    assert "- m2: cpu backend, CPU B, torch 2.9, 1 thread (1 trials)" in text
    assert "- m3: reference backend, CPU A, torch 2.9, 1 thread (2 trials)" in text
    assert "**Incomplete**: 6a rnn 2 of 3 trials have a result" in text
    assert "lstmlab reproduce 1997 --rows 6a --seeds 5\n```" in text


def test_diverged_trials_and_budgets_below_the_check_are_counted_apart():
    exp, _, _ = hand_made_report()
    done = {
        ("6a", "rnn", 0): result(False, 31390),
        ("6a", "rnn", 1): {**result(False, None), "seen": None, "diverged": "loss is nan"},
        ("6a", "rnn", 2): {**result(False, 300), "criterion_reachable": False},
    }
    (line,) = summarise(exp, tuple(done), done, {"6a/rnn": 31390})
    assert (line["unsolved_sequences"], line["diverged"], line["unreachable"]) == ([300, 31390], 1, 1)
    assert line["fraction"] == 0.0
    expected = "| 0/3 (0%) | - | 2 at 300-31,390; 1 diverged; 1 with a budget below the criterion's check |"
    assert expected in table_line(line)


def test_the_report_is_written_whole_with_a_figure_per_row(tmp_path):
    exp, table, meta = hand_made_report()
    files = write_report(exp, table, HAND_MADE, meta, tmp_path)
    assert [f.name for f in files] == ["reproduce-1997.md", "reproduce-1997.json", "reproduce-1997-6a.png"]
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)  # no temporary file left
    saved = json.loads(files[1].read_text())
    assert saved["table"][0]["sequences"] == {"median": 4482.5, "min": 3603, "max": 5327}
    assert [(t["arm"], t["seed"]) for t in saved["trials"]][:2] == [("modern", 0), ("modern", 1)]


def test_a_figure_that_fails_leaves_the_previous_one(tmp_path, monkeypatch):
    import matplotlib.figure

    exp, table, meta = hand_made_report()
    png = write_report(exp, table, HAND_MADE, meta, tmp_path)[2]
    before = png.read_bytes()

    def broken(self, f, **kw):
        f.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(exp, table, HAND_MADE, meta, tmp_path)
    assert png.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


# ---- arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--rows", "6a", "nope"],
            "--rows nope: not a row of 1997; allowed: 1-3x2-lr0.5, 1-4x1-lr0.1, 2a, 2b, 2c-q50-p50,",
        ),
        (["--arms", "lstm"], "--arms lstm: not an arm of 1997; allowed: paper, modern, rnn"),
        (["--seeds", "0"], "--seeds 0 is invalid; allowed: an int >= 1"),
        (["--workers", "0"], "--workers 0 is invalid; allowed: an int >= 1"),
        (["--budget", "lots"], "--budget 'lots' is invalid; allowed: default, paper or a number of sequences > 0"),
        (["--budget", "-5"], "--budget '-5' is invalid; allowed: default, paper or a number of sequences > 0"),
        (["--max-seconds", "0"], "--max-seconds 0.0 is invalid; allowed: a number > 0"),
        (["--storage", "mysql://u@h/db"], "--storage='mysql://u@h/db' is invalid: unknown database 'mysql'"),
        (["--storage", "trials.db"], "--storage='trials.db' is invalid; allowed: a database URL"),
        (["--storage", "sqlite://", "--workers", "2"], "an in-memory SQLite database is private to one process"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["reproduce", "1997", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lstmlab reproduce: error: ") and message in err
    assert not (out / "trials.db").exists()


def test_an_unknown_paper_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "1998"])
    assert "invalid choice: '1998'" in capsys.readouterr().err
