"""Random (or TPE) search over Greff's space, one Optuna study per cell, on any storage
Optuna's RDB backend takes: a SQLite file on one machine, PostgreSQL for many.

Faults: every running trial sends a heartbeat; a worker killed mid-trial stops sending,
and the next worker (or restarted command) to look marks that trial FAILED; a worker on
the same machine whose process is gone is noticed at once (fail_dead_trials). Only COMPLETE
trials count towards `trials` per cell, so a restarted command continues the same study
and a finished result is never lost or counted twice.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import time
import warnings
import zlib
from dataclasses import asdict

import torch

from ..extras import require
from .config import SweepConfig
from .storage import check_storage, engine_url

optuna = require("optuna", "sweep", "lstmlab sweep")


def make_storage(cfg: SweepConfig) -> optuna.storages.RDBStorage:
    kwargs = {"connect_args": {"timeout": 60}} if cfg.storage.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            engine_url(cfg.storage), engine_kwargs=kwargs, heartbeat_interval=cfg.heartbeat, grace_period=cfg.grace
        )


def open_study(storage, cfg: SweepConfig, cell: str) -> optuna.Study:
    """Create the cell's study, or load it if it exists with the same settings."""
    study = optuna.create_study(
        storage=storage, study_name=cfg.study_name(cell), direction="minimize", load_if_exists=True
    )
    ident = _jsonable(cfg.identity())
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", ident)
        study.set_user_attr("cell", cell)
    elif stored != ident:
        changed = sorted(k for k in ident if stored.get(k) != ident[k])
        raise ValueError(
            f"study={cfg.study!r} exists in {cfg.storage} with other settings ({', '.join(changed)}); "
            "allowed: the same settings to continue it, or a new --study name"
        )
    return study


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _sampler(cfg: SweepConfig, cell: str, worker: int, n_trials: int):
    seed = zlib.crc32(f"{cfg.seed}/{cell}/{worker}/{n_trials}".encode())
    return (
        optuna.samplers.RandomSampler(seed=seed) if cfg.sampler == "random" else optuna.samplers.TPESampler(seed=seed)
    )


def objective(trial: optuna.Trial, cfg: SweepConfig, cell: str) -> float:
    from ..train import TrainConfig, train

    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())
    hp = cfg.space.sample(trial)
    tc = TrainConfig(
        task=cfg.task,
        task_params=dict(cfg.task_params),
        cell=cell,
        hidden_size=hp["hidden"],
        optimizer="sgd",
        lr=hp["lr"],
        momentum=hp["momentum"],
        input_noise=hp["input_noise"],
        batch_size=cfg.batch_size,
        max_sequences=cfg.max_sequences,
        max_seconds=cfg.max_seconds,
        checkpoint_every=None,
        seed=cfg.seed + trial.number,
        progress=False,
    )
    result = train(tc)
    for k, v in result.to_dict().items():
        if k in (
            "solved",
            "sequences_seen",
            "sequences_to_success",
            "test_errors",
            "test_size",
            "test_mean_error",
            "wall_seconds",
            "parameters",
        ):
            trial.set_user_attr(k, v)
    if cfg.metric == "test_error_rate":
        return result.test_errors / result.test_size
    return result.test_mean_error


def _alive(pid: int) -> bool:
    """Whether process pid runs on this machine (a zombie, killed but not yet reaped by its
    parent, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose worker is gone: at once for workers on this
    machine whose process has died, and through Optuna's heartbeats (after the grace
    period) for any worker anywhere."""
    with warnings.catch_warnings():  # Optuna marks it experimental; its behaviour is what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid and pid != os.getpid() and not _alive(pid):
            try:
                study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first


def counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return {s: states.count(s) for s in ("COMPLETE", "RUNNING", "FAIL", "PRUNED", "WAITING")}


def work(cfg: SweepConfig, worker: int = 0, threads: int | None = None, poll: float = 1.0, log=print) -> dict:
    """One worker: run trials, filling the cells in order, until every cell's study has
    cfg.trials COMPLETE trials. Safe to run any number of these at once on one storage."""
    from ..train.loop import TrainingDiverged

    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # fail_stale_trials is marked experimental since Optuna 2.9; its behaviour is what we test
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = make_storage(cfg)
    studies = {cell: open_study(storage, cfg, cell) for cell in cfg.cells}
    ran = 0
    while True:
        pending = False
        for cell, study in studies.items():
            fail_dead_trials(study)
            n = counts(study)
            if n["COMPLETE"] >= cfg.trials:
                continue
            pending = True
            if n["COMPLETE"] + n["RUNNING"] >= cfg.trials:
                continue  # the rest are running elsewhere
            study.sampler = _sampler(cfg, cell, worker, sum(n.values()))
            mine = []  # this worker's trial (the study's last may be another worker's)
            study.optimize(
                lambda t, cell=cell: objective(t, cfg, cell),
                n_trials=1,
                catch=(TrainingDiverged,),
                callbacks=[lambda _, trial, mine=mine: mine.append(trial)],
            )
            last = mine[0]
            ran += 1
            log(
                f"[worker {worker} pid {os.getpid()}] {cell} trial {last.number}: {last.state.name} "
                f"{'' if last.value is None else f'{cfg.metric}={last.value:.4g}'}"
            )
            break
        else:
            if not pending:
                return {"worker": worker, "trials_run": ran}
            time.sleep(poll)  # wait for trials running elsewhere, or for their heartbeats to lapse


def _worker_main(cfg, worker, threads):
    work(cfg, worker, threads)


def run_sweep(cfg: SweepConfig, workers: int = 1, log=print) -> dict[str, dict[str, int]]:
    """Run the sweep with `workers` local processes (1: in this process). Returns each
    cell's trial counts. Raises RuntimeError if the study is still incomplete (a worker
    died): the same command continues it."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} is invalid; allowed: an int >= 1")
    check_storage(cfg.storage, workers=workers)
    storage = make_storage(cfg)
    for cell in cfg.cells:
        open_study(storage, cfg, cell)  # create, or check the settings, before any worker starts
    if workers == 1:
        work(cfg, 0, log=log)
    else:
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // workers)
        procs = [ctx.Process(target=_worker_main, args=(cfg, i, threads), daemon=False) for i in range(workers)]
        for p in procs:
            p.start()
        log(f"started {workers} workers: pids {[p.pid for p in procs]}")
        for p in procs:
            p.join()
        dead = [(p.pid, p.exitcode) for p in procs if p.exitcode != 0]
        if dead:
            log(f"workers that did not finish cleanly (pid, exit code): {dead}")
    studies = [open_study(storage, cfg, cell) for cell in cfg.cells]
    for study in studies:
        fail_dead_trials(study)
    result = {cell: counts(study) for cell, study in zip(cfg.cells, studies)}
    missing = {c: cfg.trials - n["COMPLETE"] for c, n in result.items() if n["COMPLETE"] < cfg.trials}
    if missing:
        raise RuntimeError(
            f"the study is incomplete (trials still missing: {missing}); run the same command again to continue it"
        )
    return result
