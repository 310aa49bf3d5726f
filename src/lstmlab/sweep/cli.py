"""`lstmlab sweep` and `lstmlab sweep-report`."""

from __future__ import annotations

import json

from ..extras import require
from ..io import check_writable
from .config import GREFF_CELLS, SweepConfig
from .space import SearchSpace, parse_range
from .storage import check_storage, engine_url, shown


def _config(args) -> SweepConfig:
    check_storage(args.storage, "--storage", workers=args.workers)
    space = SearchSpace(
        hidden=tuple(int(v) for v in parse_range(args.hidden, "hidden")),
        lr=parse_range(args.lr, "lr"),
        one_minus_momentum=parse_range(args.one_minus_momentum, "one_minus_momentum"),
        input_noise=parse_range(args.input_noise, "input_noise"),
    )
    params = json.loads(args.task_params) if args.task_params else {}
    if not isinstance(params, dict):
        raise ValueError(f"--task-params={args.task_params!r} is invalid; allowed: a JSON object")
    return SweepConfig(
        task=args.task,
        cells=tuple(c.strip() for c in args.cells.split(",") if c.strip()),
        trials=args.trials,
        storage=args.storage,
        study=args.study,
        task_params=params,
        sampler=args.sampler,
        metric=args.metric,
        space=space,
        max_sequences=args.max_sequences,
        max_seconds=args.max_seconds,
        batch_size=args.batch_size,
        seed=args.seed,
        heartbeat=args.heartbeat,
        grace=args.grace,
    )


def _sweep(args) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers={args.workers} is invalid; allowed: an int >= 1")
    cfg = _config(args)
    require("optuna", "sweep", "lstmlab sweep")
    url = engine_url(cfg.storage)
    scheme = url.split("://")[0]
    driver = "" if url == cfg.storage else f" (opened as {scheme}://, since psycopg 3 is not installed)"
    print(
        f"lstmlab sweep: {cfg.task}, {len(cfg.cells)} variants x {cfg.trials} trials, "
        f"{args.workers} worker(s), storage {shown(cfg.storage)}{driver}, study {cfg.study!r}"
    )
    from .run import run_sweep

    try:
        result = run_sweep(cfg, workers=args.workers)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            "the trials that were running are lost, the finished ones are kept in "
            "--storage; run the same command again to continue the study"
        ) from None
    except RuntimeError as e:
        print(f"lstmlab sweep: {e}")
        return 1
    for cell, n in result.items():
        print(f"  {cell:10s} complete {n['COMPLETE']:4d}  failed {n['FAIL']:3d}")
    return 0


def _report(args) -> int:
    check_storage(args.storage, "--storage", must_exist=True)
    check_writable(args.out, "--out")
    require("optuna", "sweep", "lstmlab sweep-report")
    engine_url(args.storage)
    from .report import write_sweep_report

    summary = write_sweep_report(args.storage, args.study, args.out, baseline=args.baseline)
    for cell, r in summary["variants"].items():
        p = r.get("p_value")
        print(
            f"  {cell:10s} n={r['complete']:4d} median {r['median']!s:>10.10}  p vs {args.baseline}: "
            f"{'—' if p is None else f'{p:.3g}'}"
        )
    print(f"wrote {args.out}/sweep.json, report.md and figures")
    return 0


def register(sub) -> None:
    d = SweepConfig.__dataclass_fields__
    s = SearchSpace()
    p = sub.add_parser("sweep", help="random/TPE search over Greff's space for several variants (Optuna)")
    p.add_argument("--task", required=True)
    p.add_argument("--task-params", default="", help="task parameters as JSON, e.g. '{\"T\": 50}'")
    p.add_argument("--cells", default=",".join(GREFF_CELLS))
    p.add_argument("--trials", type=int, default=d["trials"].default, help="COMPLETE trials per variant")
    p.add_argument(
        "--storage",
        default=d["storage"].default,
        help="sqlite:///FILE (one machine; its folder must exist) or postgresql://USER:PASS@HOST/DB "
        "(many; opened with psycopg2, which lstmlab[sweep] installs, unless psycopg 3 is there)",
    )
    p.add_argument("--study", default=d["study"].default)
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--sampler", choices=["random", "tpe"], default="random")
    p.add_argument("--metric", choices=["test_mean_error", "test_error_rate"], default="test_mean_error")
    p.add_argument("--hidden", default=f"{s.hidden[0]},{s.hidden[1]}", help="LOW,HIGH (log-uniform)")
    p.add_argument("--lr", default=f"{s.lr[0]:g},{s.lr[1]:g}", help="LOW,HIGH (log-uniform)")
    p.add_argument(
        "--one-minus-momentum",
        default=f"{s.one_minus_momentum[0]:g},{s.one_minus_momentum[1]:g}",
        help="LOW,HIGH of 1 - momentum (log-uniform)",
    )
    p.add_argument(
        "--input-noise",
        default=f"{s.input_noise[0]:g},{s.input_noise[1]:g}",
        help="LOW,HIGH of the input noise std (uniform)",
    )
    p.add_argument("--max-sequences", type=int, default=d["max_sequences"].default, help="per trial")
    p.add_argument("--max-seconds", type=float, default=None, help="per trial")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heartbeat", type=int, default=d["heartbeat"].default, help="seconds")
    p.add_argument(
        "--grace",
        type=int,
        default=d["grace"].default,
        help="seconds without a heartbeat before a trial counts as failed",
    )
    p.set_defaults(func=_sweep)
    r = sub.add_parser("sweep-report", help="box plots, Welch's t-tests, fANOVA importance of a sweep")
    r.add_argument("--storage", default=d["storage"].default, help="as for sweep; the database must exist")
    r.add_argument("--study", default=d["study"].default)
    r.add_argument("--baseline", default="vanilla", help="the variant the others are tested against")
    r.add_argument("--out", required=True)
    r.set_defaults(func=_report)
