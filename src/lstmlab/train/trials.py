"""Resumable trials on Optuna's RDB storage (a SQLite file on one machine, PostgreSQL for
many): a fixed set of keys (row, arm, seed), each run once by one worker, its result kept as
the trial's user attrs. `lstmlab reproduce` is built on this.

How a key is run exactly once:
- Claim: a worker picks a key with no RUNNING or COMPLETE trial and creates a RUNNING trial
  for it, the key (row, arm, seed) and the worker (host, pid, the process's start time) in
  its user attrs, in one step. Optuna creates trials one at a time (it locks the study to
  number them), so if two workers chose the same key, the one with the higher trial number
  sees the other's and marks its own FAIL as a duplicate before any work is done.
- Run: while the trial runs its worker sends Optuna heartbeats. The result goes into the
  trial's user attrs and the trial becomes COMPLETE; a key with a COMPLETE trial is never
  run again, by this command or any later one.
- A dead worker: its RUNNING trial is marked FAIL at once by any worker on the same host
  that sees its process gone (pid and start time, so a reused pid is not taken for it), and
  by any worker anywhere once its heartbeats have lapsed for `grace` seconds. Its key is
  then free, and the next worker to look runs it. A trial that raised is FAIL with its
  error recorded and is retried by the next command, not in a loop by this one. (A worker
  on another machine that dies between creating its trial and its first heartbeat, a few
  milliseconds, leaves a RUNNING trial no one can tell from a live one.)

No WAITING trials are queued: Optuna re-reads every unfinished trial on each look, so a
queue of hundreds of them would cost each claim a second.
Several commands (on several machines) may work on one study at once.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import torch

from ..bench import cpu_model
from ..extras import require
from ..sweep.storage import check_storage, engine_url, shown

optuna = require("optuna", "sweep", "lstmlab reproduce")
TrialState = optuna.trial.TrialState

Key = tuple[str, str, int]  # (row, arm, seed)


@dataclass(frozen=True)
class TrialSet:
    """What the workers of one study share (picklable: spawned workers get a copy).

    storage: a database URL (lstmlab.sweep.storage); study: the study's name.
    keys: the (row, arm, seed) to run, in this order.
    trial: "module:function", called function(row, arm, seed, max_sequences, max_seconds)
        -> a JSON-serialisable dict (its result).
    max_sequences: budget_key(row, arm) -> that row's and arm's budget (None: the trial's own).
    max_seconds: each trial's wall-clock limit (None: none).
    identity: settings that must not change while a study is continued (stored in the
        study; a different one is refused; a dict value may gain keys, e.g. budgets when
        rows are added, but not change one).
    heartbeat, grace: seconds between a running trial's heartbeats, and without one before
        another worker counts it dead.
    """

    storage: str
    study: str
    keys: tuple[Key, ...]
    trial: str
    max_sequences: dict = field(default_factory=dict)
    max_seconds: float | None = None
    identity: dict = field(default_factory=dict)
    heartbeat: int = 10
    grace: int = 120


def budget_key(row: str, arm: str) -> str:
    return f"{row}/{arm}"


def machine() -> dict:
    """Where a result was measured: CPU model, host, torch version, torch threads."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def make_storage(ts: TrialSet):
    kwargs = {"connect_args": {"timeout": 60}} if ts.storage.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            engine_url(ts.storage), engine_kwargs=kwargs, heartbeat_interval=ts.heartbeat, grace_period=ts.grace
        )


def open_study(storage, ts: TrialSet):
    """Create the study, or load it if it exists with the same identity (whose dict
    values are merged: new keys are added, a changed one is refused)."""
    study = optuna.create_study(storage=storage, study_name=ts.study, direction="minimize", load_if_exists=True)
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", ts.identity)
        return study
    changed = []
    for k in sorted({*stored, *ts.identity}):
        old, new = stored.get(k), ts.identity.get(k)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [
                f"{k}[{j!r}]: {old[j]!r} -> {new[j]!r}" for j in sorted(old.keys() & new.keys()) if old[j] != new[j]
            ]
        elif old != new:
            changed.append(f"{k}: {old!r} -> {new!r}")
    if changed:
        raise ValueError(
            f"study {ts.study!r} exists in {shown(ts.storage)} with other settings ({'; '.join(changed)}); "
            "allowed: the same settings to continue it, or another --storage/--out"
        )
    merged = {k: {**stored[k], **v} if isinstance(v, dict) else v for k, v in ts.identity.items()}
    if merged != stored:
        study.set_user_attr("identity", merged)
    return study


def key_of(trial) -> Key | None:
    a = trial.user_attrs
    return (a["row"], a["arm"], a["seed"]) if "row" in a else None


def _started(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (None if it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid())}


def _dead(owner: dict) -> bool:
    """Whether the process that owned a trial is known to be gone (only on this host)."""
    if owner.get("host") != socket.gethostname() or not os.path.isdir("/proc"):
        return False
    return _started(owner["pid"]) != owner["started"]


def fail_dead_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; their numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeats lapsed, any host
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner")
        if owner and _dead(owner) and _set_state(study, t._trial_id, TrialState.FAIL):
            failed.append(t.number)
    return failed


def _set_state(study, trial_id: int, state) -> bool:
    try:
        return study._storage.set_trial_state_values(trial_id, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker got there first


def todo(study, keys, retry_before: int) -> list[Key]:
    """The keys without a live trial (RUNNING or COMPLETE), in order; a key whose trial
    raised only if that trial's number is below retry_before (raised before this command)."""
    live, errored = set(), set()
    for t in study.get_trials(deepcopy=False):
        key = key_of(t)
        if t.state in (TrialState.RUNNING, TrialState.COMPLETE):
            live.add(key)
        elif t.state == TrialState.FAIL and "error" in t.user_attrs and t.number >= retry_before:
            errored.add(key)
    return [k for k in keys if k not in live and k not in errored]


def claim(study, key: Key):
    """A new RUNNING trial of `key`, this worker's, or None if the key turned out to be
    another's: trials are created one at a time (Optuna locks the study to number them),
    so of two workers that chose the same key the one whose trial has the higher number
    sees the other's and marks its own FAIL as a duplicate."""
    row, arm, seed = key
    template = optuna.trial.FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={"row": row, "arm": arm, "seed": seed, "owner": _owner()},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    study._storage.record_heartbeat(trial_id)
    mine = study._storage.get_trial(trial_id)
    earlier = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < mine.number and key_of(t) == key and t.state in (TrialState.RUNNING, TrialState.COMPLETE)
    ]
    if earlier:
        study._storage.set_trial_user_attr(trial_id, "duplicate", earlier[0].number)
        _set_state(study, trial_id, TrialState.FAIL)
        return None
    return mine


def _heartbeats(storage, trial_id: int, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            storage.record_heartbeat(trial_id)
        except Exception:  # a missed beat is harmless; the next one may get through
            pass


def resolve(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run_claimed(study, ts: TrialSet, t, fn: Callable) -> dict | None:
    """Run trial t (RUNNING, this worker's) and record its result; None if it raised."""
    row, arm, seed = key_of(t)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeats, args=(study._storage, t._trial_id, ts.heartbeat, stop), daemon=True)
    beat.start()
    try:
        result = fn(row, arm, seed, ts.max_sequences.get(budget_key(row, arm)), ts.max_seconds)
    except Exception as e:
        study._storage.set_trial_user_attr(t._trial_id, "error", "".join(traceback.format_exception_only(e)).strip())
        _set_state(study, t._trial_id, TrialState.FAIL)
        return None
    except BaseException:  # Ctrl-C: the trial is lost, not its worker's claim on it
        _set_state(study, t._trial_id, TrialState.FAIL)
        raise
    finally:
        stop.set()
        beat.join()
    where, own = machine(), result.get("machine")  # a trial's own description of its machine is kept
    if isinstance(own, dict):
        where.update(own)
    elif own is not None:
        where["label"] = own
    result = {**result, "machine": where}
    value = float(result.get("sequences") or 0)
    try:
        study._storage.set_trial_user_attr(t._trial_id, "result", result)
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.COMPLETE, values=[value])
    except optuna.exceptions.UpdateFinishedTrialError:
        # marked dead while alive (heartbeats held up past the grace period): keep the result
        attrs = {"row": row, "arm": arm, "seed": seed, "result": result, "late": t.number}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    return result


def work(ts: TrialSet, worker: int = 0, retry_before: int = 0, poll: float = 1.0, log=print) -> int:
    """One worker: claim and run trials until every key has a result or raised; while the
    last ones run elsewhere, wait, to take over any whose worker dies. Worker w takes the
    w-th key left (fewer collisions). Keys whose trial raised are retried only if it was
    numbered below retry_before. Returns how many trials it ran. Safe to run any number of
    these at once, on any number of machines."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(make_storage(ts), ts)
    fn = resolve(ts.trial)
    ran = 0
    while True:
        fail_dead_trials(study)
        left = todo(study, ts.keys, retry_before)
        if not left:
            if not any(s == "RUNNING" for s in states(study, ts.keys).values()):
                return ran
            time.sleep(poll)  # the rest run elsewhere: wait in case their workers die
            continue
        t = claim(study, left[worker % len(left)])
        if t is None:
            continue
        result = run_claimed(study, ts, t, fn)
        ran += 1
        row, arm, seed = key_of(t)
        done = sum(1 for k, s in states(study, ts.keys).items() if s == "COMPLETE")
        what = "raised (see the report)" if result is None else describe(result)
        log(f"[worker {worker} pid {os.getpid()}] {row} {arm} seed {seed}: {what} [{done}/{len(ts.keys)} done]")


def describe(result: dict) -> str:
    solved = result.get("solved")
    seconds = result.get("wall_seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    if solved:
        return f"solved after {result.get('sequences', 0):,} sequences{took}"
    return f"not solved in {result.get('seen', result.get('sequences', 0)) or 0:,} sequences{took}"


def states(study, keys) -> dict[Key, str]:
    """Each key's state: COMPLETE if any trial of it is, else RUNNING, FAIL, or MISSING
    (no trial)."""
    order = ("COMPLETE", "RUNNING", "FAIL")
    best = dict.fromkeys(keys, "MISSING")
    for t in study.get_trials(deepcopy=False):
        key = key_of(t)
        if key in best and t.state.name in order:
            now = best[key]
            if now == "MISSING" or order.index(t.state.name) < order.index(now):
                best[key] = t.state.name
    return best


def results(study, keys) -> dict[Key, dict]:
    """The result of every key that has one (its first COMPLETE trial's)."""
    out = {}
    wanted = set(keys)
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        key = key_of(t)
        if key in wanted and key not in out:
            out[key] = {**t.user_attrs["result"], "trial": t.number}
    return out


def trial_errors(ts: TrialSet) -> dict[Key, str]:
    """The last error of every key of ts that has no result and whose trial raised."""
    study = open_study(make_storage(ts), ts)
    left = set(ts.keys) - set(results(study, ts.keys))
    out = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)), key=lambda t: t.number):
        key = key_of(t)
        if key in left and "error" in t.user_attrs:
            out[key] = t.user_attrs["error"]
    return out


def _worker_main(ts: TrialSet, worker: int, retry_before: int) -> None:
    torch.set_num_threads(1)
    try:
        work(ts, worker, retry_before)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: its trial is FAIL already; the parent reports
        sys.exit(130)


def run_trials(ts: TrialSet, workers: int = 1, log=print) -> dict[Key, dict]:
    """Run every key of ts that has no result yet with `workers` processes (1: in this
    process), each on one torch thread; return every key's result. Keys without one (a
    trial raised, or a worker died) are missing: the same call again runs only those."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} is invalid; allowed: an int >= 1")
    check_storage(ts.storage, workers=workers)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(make_storage(ts), ts)
    dead = fail_dead_trials(study)
    if dead:
        log(f"trials {dead} were left RUNNING by workers that are gone: marked FAIL, to be run again")
    retry_before = len(study.get_trials(deepcopy=False))
    left = len(todo(study, ts.keys, retry_before))
    log(f"study {ts.study!r} in {shown(ts.storage)}: {len(ts.keys) - left} of {len(ts.keys)} trials done or running")
    if workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            work(ts, 0, retry_before, log=log)
        finally:
            torch.set_num_threads(threads)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(ts, i, retry_before)) for i in range(workers)]
        for p in procs:
            p.start()
        log(f"started {workers} workers: pids {[p.pid for p in procs]}")
        try:
            for p in procs:
                p.join()
        except BaseException:
            for p in procs:
                p.terminate()
            for p in procs:
                p.join()
            raise
        gone = [(p.pid, p.exitcode) for p in procs if p.exitcode != 0]
        if gone:
            log(f"workers that did not finish cleanly (pid, exit code): {gone}")
        fail_dead_trials(study)
    return results(study, ts.keys)


__all__ = ["Key", "TrialSet", "budget_key", "machine", "results", "run_trials", "states", "trial_errors", "work"]
