"""Variant sweeps on real storage: SQLite by default, a real PostgreSQL server for many
workers, a worker killed mid-trial, a restarted command, and the report."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest

from lstmlab.sweep import SearchSpace, SweepConfig, run_sweep, write_sweep_report
from lstmlab.sweep.run import counts, make_storage, open_study

TASK = dict(task="adding", task_params={"T": 30})


def cfg(storage="sqlite:///unused.db", **kw):
    base = dict(
        cells=("vanilla", "nfg"),
        trials=3,
        storage=storage,
        study="t",
        max_sequences=30,
        space=SearchSpace(hidden=(4, 8), lr=(1e-3, 1e-1)),
        heartbeat=1,
        grace=3,
        **TASK,
    )
    base.update(kw)
    return SweepConfig(**base)


def trials_by_state(c, cell):
    study = optuna.load_study(study_name=c.study_name(cell), storage=make_storage(c))
    return {t.number: (t.state.name, t.value, t.user_attrs.get("pid")) for t in study.get_trials()}


@pytest.mark.slow
def test_sqlite_sweep_runs_and_continues(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    c = cfg(url, trials=2)
    result = run_sweep(c, log=lambda *_: None)
    assert {cell: n["COMPLETE"] for cell, n in result.items()} == {"vanilla": 2, "nfg": 2}
    first = {cell: trials_by_state(c, cell) for cell in c.cells}
    for cell in c.cells:  # every trial trained a real model and recorded its test result
        for state, value, _ in first[cell].values():
            assert state == "COMPLETE" and 0 <= value < 10
    # the same command with more trials continues the study: old trials untouched, one more each
    c3 = cfg(url, trials=3)
    run_sweep(c3, log=lambda *_: None)
    for cell in c.cells:
        now = trials_by_state(c3, cell)
        assert len(now) == 3 and all(now[k] == v for k, v in first[cell].items())
    # run again at 3: nothing to do, nothing counted twice
    run_sweep(c3, log=lambda *_: None)
    assert all(len(trials_by_state(c3, cell)) == 3 for cell in c.cells)


def test_changed_settings_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    open_study(make_storage(cfg(url)), cfg(url), "vanilla")
    with pytest.raises(ValueError, match=r"study='t' exists .* with other settings \(max_sequences\)"):
        open_study(make_storage(cfg(url)), cfg(url, max_sequences=31), "vanilla")


@pytest.mark.parametrize(
    "kw,pattern",
    [
        (dict(trials=0), r"trials=0 is invalid"),
        (dict(cells=("vanilla", "lsmt")), r"cell='lsmt'"),
        (dict(storage="sweeps.db"), r"storage='sweeps.db' is invalid; allowed: a database URL"),
        (dict(metric="accuracy"), r"metric='accuracy'"),
        (dict(grace=1), r"grace=1 is invalid"),
    ],
)
def test_bad_config(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        cfg(**kw)


def test_search_space_ranges():
    with pytest.raises(ValueError, match=r"lr=\(0.0, 0.01\) is invalid"):
        SearchSpace(lr=(0.0, 1e-2))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace()
    draws = [space.sample(study.ask()) for _ in range(300)]
    assert all(
        20 <= d["hidden"] <= 200
        and 1e-6 <= d["lr"] <= 1e-2
        and 0 <= d["momentum"] <= 0.99
        and 0 <= d["input_noise"] <= 1
        for d in draws
    )
    # log-uniform: about half the learning rates below the geometric midpoint 1e-4
    assert 0.4 < sum(d["lr"] < 1e-4 for d in draws) / 300 < 0.6


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(postgres_url):
    c = cfg(postgres_url, cells=("vanilla",), trials=4, study="pg", max_seconds=1.0, max_sequences=10_000)
    result = run_sweep(c, workers=2, log=lambda *_: None)
    assert result["vanilla"]["COMPLETE"] == 4
    trials = trials_by_state(c, "vanilla")
    assert [s for s, _, _ in trials.values()].count("COMPLETE") == 4
    assert len({pid for _, _, pid in trials.values()}) == 2  # both workers ran trials


# The sweep command, with trials that tell the test where they are. Spawned workers run this
# file's top level again (as __mp_main__), so each worker's training is wrapped the same way:
# the first trial to start after any trial has finished becomes the victim: it writes its
# worker's pid to victim.pid and waits to be killed (at most 300 s, then fails loudly).
KILL_DRIVER = """
import os, sys, time
from pathlib import Path

import lstmlab.train

here = Path(os.environ["LSTMLAB_TEST_SWEEP_DIR"])
real_train = lstmlab.train.train


def train(config, *args, **kwargs):
    if (here / "finished").exists():
        try:
            os.close(os.open(here / "victim.claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass  # another trial is the victim
        else:
            (here / "victim.tmp").write_text(str(os.getpid()))
            os.replace(here / "victim.tmp", here / "victim.pid")
            time.sleep(300)
            raise RuntimeError("the victim was never killed")
    result = real_train(config, *args, **kwargs)
    (here / "finished").touch()
    return result


lstmlab.train.train = train

if __name__ == "__main__":
    from lstmlab.cli import main

    sys.exit(main(sys.argv[1:]))
"""


def wait_for(what, check, timeout=120.0):
    """check()'s first true value, asking every 50 ms; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"waited {timeout:.0f} s for {what}")


@pytest.mark.slow
def test_worker_killed_mid_trial_loses_only_that_trial(tmp_path):
    url = f"sqlite:///{tmp_path}/k.db"
    c = cfg(url, cells=("vanilla",), trials=3, study="k", max_sequences=30)
    driver = tmp_path / "sweep_driver.py"
    driver.write_text(KILL_DRIVER)
    cmd = [
        sys.executable,
        str(driver),
        "sweep",
        "--task",
        "adding",
        "--task-params",
        '{"T": 30}',
        "--cells",
        "vanilla",
        "--trials",
        "3",
        "--storage",
        url,
        "--study",
        "k",
        "--workers",
        "2",
        "--hidden",
        "4,8",
        "--lr",
        "0.001,0.1",
        "--max-sequences",
        "30",
        "--heartbeat",
        "1",
        "--grace",
        "3",
    ]
    env = {**os.environ, "LSTMLAB_TEST_SWEEP_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        victim_pid = int(
            wait_for(
                "a worker inside a trial after another trial finished",
                lambda: (tmp_path / "victim.pid").exists() and (tmp_path / "victim.pid").read_text(),
            )
        )

        def finished_and_running():
            now = trials_by_state(c, "vanilla")
            states = [s for s, _, _ in now.values()]
            return now if "COMPLETE" in states and "RUNNING" in states else None

        now = wait_for("the finished trial and the victim's in the study", finished_and_running)
        (victim,) = [n for n, (s, _, pid) in now.items() if s == "RUNNING" and pid == victim_pid]
        before = {n: v for n, v in now.items() if v[0] == "COMPLETE"}
        os.kill(victim_pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    after = trials_by_state(c, "vanilla")
    assert after[victim][0] == "FAIL"  # the killed trial, marked failed as its worker is gone
    assert all(after[n] == v for n, v in before.items())  # finished results intact
    assert [s for s, _, _ in after.values()].count("COMPLETE") == 3
    assert f"{victim_pid}" in out  # the parent reports the dead worker


@pytest.mark.slow
def test_report(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/r.db"
    c = cfg(url, trials=4)
    run_sweep(c, log=lambda *_: None)
    out = tmp_path / "rep"
    summary = write_sweep_report(url, "t", out)
    data = json.loads((out / "sweep.json").read_text())
    assert set(data["variants"]) == {"vanilla", "nfg"}
    v, n = data["variants"]["vanilla"], data["variants"]["nfg"]
    assert v["complete"] == n["complete"] == 4
    from scipy import stats

    ref = stats.ttest_ind(n["values"], v["values"], equal_var=False)
    assert n["p_value"] == pytest.approx(ref.pvalue) and n["welch_t"] == pytest.approx(ref.statistic)
    assert n["p_bonferroni"] == pytest.approx(min(1.0, ref.pvalue))  # one variant tested
    for r in (v, n):  # of an even count, the median is the mean of the middle two
        middle = sorted(r["values"])[1:3]
        assert r["median"] == (middle[0] + middle[1]) / 2 and middle[0] != middle[1]
    imp = summary["importance_pooled"]
    assert set(imp) == {"hidden", "lr", "one_minus_momentum", "input_noise", "cell"}
    assert sum(imp.values()) == pytest.approx(1.0)
    for f in ("boxplot.png", "lr_scatter.png", "importance.png", "report.md"):
        assert (out / f).stat().st_size > 200
    with pytest.raises(ValueError, match=r"study='nope' has no variants"):
        write_sweep_report(url, "nope", tmp_path / "x")
    with pytest.raises(ValueError, match=r"--baseline 'lstm' is not a variant of study 't'; allowed: nfg, vanilla"):
        write_sweep_report(url, "t", tmp_path / "x", baseline="lstm")
    from lstmlab.cli import main

    report = ["sweep-report", "--storage", url, "--study", "t"]
    assert main(report + ["--baseline", "lstm", "--out", str(tmp_path / "x")]) == 2
    assert "error: --baseline 'lstm' is not a variant of study 't'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(report + ["--baseline", "nfg", "--out", str(tmp_path / "y")]) == 0
    assert json.loads((tmp_path / "y" / "sweep.json").read_text())["variants"]["vanilla"]["p_value"] == pytest.approx(
        n["p_value"]
    )  # Welch's test is symmetric in its two samples


# ---- the --storage URL -------------------------------------------------------------------
@pytest.mark.parametrize(
    "url,workers,why",
    [
        ("sweeps.db", 1, r"is invalid; allowed: a database URL, e.g. sqlite:///FILE or postgresql://"),
        ("mysql://u:p@host/db", 1, r"is invalid: unknown database 'mysql'; allowed: sqlite, postgresql"),
        ("postgresql+asyncpg://u@host/db", 1, r"is invalid: unknown PostgreSQL driver 'asyncpg'; allowed: psycopg2"),
        ("postgresql://u@host:port/db", 1, r"is invalid: malformed URL \(.*port.*\)"),
        ("postgresql://", 1, r"is invalid: no server and no database"),
        (
            "sqlite:///{tmp}/no/such/folder/s.db",
            1,
            r"is invalid: the folder '{tmp}/no/such/folder' of the database "
            r"file does not exist",
        ),
        ("sqlite://", 2, r"is invalid: an in-memory SQLite database is private to one process, so 2 workers"),
        ("sqlite:///:memory:", 3, r"is invalid: an in-memory SQLite database is private to one process, so 3 workers"),
    ],
)
def test_bad_storage_urls_are_refused_naming_the_option(tmp_path, capsys, url, workers, why):
    from lstmlab.cli import main

    url = url.format(tmp=tmp_path)
    argv = [
        "sweep",
        "--task",
        "adding",
        "--cells",
        "vanilla",
        "--trials",
        "1",
        "--max-sequences",
        "1",
        "--storage",
        url,
        "--workers",
        str(workers),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"lstmlab sweep: error: --storage=" + re.escape(repr(url)) + " " + why.format(tmp=tmp_path), err
    ), err
    assert not list(tmp_path.iterdir())  # nothing created
    with pytest.raises(ValueError, match=r"storage=" + re.escape(repr(url))):
        run_sweep(cfg(url), workers=workers, log=lambda *_: None)


def test_sweep_report_wants_an_existing_database(tmp_path, capsys):
    from lstmlab.cli import main

    url = f"sqlite:///{tmp_path}/missing.db"
    assert main(["sweep-report", "--storage", url, "--out", str(tmp_path / "rep")]) == 2
    assert (
        f"--storage={url!r} is invalid: the database file '{tmp_path}/missing.db' does not exist"
        in capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir())  # no empty database created


def test_bare_postgresql_url_opens_with_the_installed_driver(monkeypatch):
    from lstmlab.extras import MissingExtra
    from lstmlab.sweep import storage

    url = "postgresql://u:secret@db-host/lstmlab"
    installed = {"psycopg": False, "psycopg2": True}
    monkeypatch.setattr(storage, "_installed", lambda m: installed.get(m, True))
    assert storage.engine_url(url) == "postgresql+psycopg2://u:secret@db-host/lstmlab"
    installed["psycopg"] = True  # psycopg 3, SQLAlchemy's default: the URL as it is
    assert storage.engine_url(url) == url
    installed.update(psycopg=False, psycopg2=False)
    with pytest.raises(
        MissingExtra,
        match=r"--storage postgresql:// needs the PostgreSQL driver psycopg2, .*"
        r"pip install 'lstmlab\[sweep\]'",
    ):
        storage.engine_url(url)
    assert storage.engine_url("sqlite:///x.db") == "sqlite:///x.db"
    assert storage.shown(url) == "postgresql://u:***@db-host/lstmlab"


def test_the_readme_postgresql_url_runs_a_sweep(postgres_url, capsys):
    """README writes postgresql://USER:PASS@HOST/DB, without a driver."""
    from lstmlab.cli import main

    bare = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    assert bare.startswith("postgresql://")
    argv = [
        "sweep",
        "--task",
        "adding",
        "--task-params",
        '{"T": 30}',
        "--cells",
        "vanilla",
        "--trials",
        "1",
        "--storage",
        bare,
        "--study",
        "bare",
        "--hidden",
        "4,8",
        "--max-sequences",
        "10",
    ]
    assert main(argv) == 0, capsys.readouterr()
    assert "vanilla    complete    1" in capsys.readouterr().out
    assert counts(optuna.load_study(study_name="bare:vanilla", storage=postgres_url))["COMPLETE"] == 1


# ---- logs and the report -----------------------------------------------------------------
def test_the_log_credits_each_worker_with_its_own_trial(tmp_path, monkeypatch):
    """Another worker's trial may finish while this one trains: the log line must name the
    trial this worker ran, not the study's latest."""
    from lstmlab.sweep import run

    c = cfg(f"sqlite:///{tmp_path}/w.db", cells=("vanilla",), trials=1, study="w")
    other = optuna.trial.create_trial(
        params={"lr": 0.01}, value=0.25, distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)}
    )

    def objective_while_another_finishes(trial, cfg_, cell):
        optuna.load_study(study_name=c.study_name(cell), storage=make_storage(c)).add_trial(other)
        return 0.5

    monkeypatch.setattr(run, "objective", objective_while_another_finishes)
    lines = []
    run.work(c, worker=3, log=lines.append)
    assert len(lines) == 1 and re.fullmatch(
        rf"\[worker 3 pid {os.getpid()}\] vanilla trial 0: COMPLETE "
        r"test_mean_error=0\.5",
        lines[0].strip(),
    ), lines
    assert trials_by_state(c, "vanilla")[1][:2] == ("COMPLETE", 0.25)  # the other worker's, trial 1


def test_ctrl_c_keeps_the_finished_trials(tmp_path, monkeypatch, capsys):
    from lstmlab.cli import main
    from lstmlab.sweep import run

    url = f"sqlite:///{tmp_path}/c.db"
    calls = []

    def objective_then_ctrl_c(trial, cfg_, cell):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the second trial
        return 0.5

    monkeypatch.setattr(run, "objective", objective_then_ctrl_c)
    assert (
        main(["sweep", "--task", "adding", "--cells", "vanilla", "--trials", "3", "--storage", url, "--study", "c"])
        == 130
    )
    assert (
        "lstmlab sweep: interrupted: the trials that were running are lost, the finished ones are kept"
        in capsys.readouterr().err
    )
    c = cfg(url, cells=("vanilla",), study="c")
    assert [s for s, _, _ in trials_by_state(c, "vanilla").values()] == ["COMPLETE", "FAIL"]
