"""`lstmlab flow`: the gradient-flow study (the project's main job, `make demo`)."""

from __future__ import annotations

import time
from dataclasses import fields

import torch

from ..io import check_writable, write_json, write_text
from .study import DEFAULT_CELLS, FlowConfig, run_study


def _floats(text):
    return tuple(float(v) for v in text.split(",") if v.strip())


def _run(args) -> int:
    from .plots import draw_all
    from .report import write_report

    cfg = FlowConfig(
        cells=tuple(c.strip() for c in args.cells.split(",") if c.strip()),
        steps=args.steps,
        hidden=args.hidden,
        input_size=args.input_size,
        batch=args.batch,
        seed=args.seed,
        forget_bias=args.forget_bias,
        init=args.init,
        heatmap_stride=args.heatmap_stride,
        forget_biases=_floats(args.forget_bias_sweep),
        lstm_forget_biases=_floats(args.lstm_forget_biases),
    )
    if args.threads < 1:
        raise ValueError(f"threads={args.threads} is invalid; allowed: an int >= 1")
    # The batched QR/SVD here are small (S x S, S <= 2H): more threads mostly add waiting,
    # and on a busy machine spinning threads can slow the study many times over.
    torch.set_num_threads(args.threads)
    out = check_writable(args.out, "--out")
    t0 = time.perf_counter()
    print(f"lstmlab flow: {len(cfg.cells)} cells, hidden {cfg.hidden}, {cfg.steps} steps -> {out}/")
    results = run_study(cfg)
    results["seconds"] = time.perf_counter() - t0
    write_json(out / "flow.json", results)
    figures = draw_all(results, out)
    write_report(results, figures, lambda doc: write_text(out / "report.html", doc))
    print(
        f"wrote {out / 'flow.json'}, {out / 'report.html'} and {', '.join(figures)} in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def register(sub) -> None:
    d = {f.name: f.default for f in fields(FlowConfig)}
    p = sub.add_parser("flow", help="the gradient-flow study: RNN against LSTM, report and plots")
    p.add_argument("--cells", default=",".join(DEFAULT_CELLS), help="comma-separated cell names")
    p.add_argument("--steps", type=int, default=d["steps"], help="sequence length T (longest lag)")
    p.add_argument("--hidden", type=int, default=d["hidden"])
    p.add_argument("--input-size", type=int, default=d["input_size"])
    p.add_argument("--batch", type=int, default=d["batch"], help="sequences averaged over")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument(
        "--forget-bias",
        type=float,
        default=None,
        help="initial forget-gate bias of the cells that have a free forget gate",
    )
    p.add_argument("--init", choices=["torch", "1997"], default=d["init"])
    p.add_argument("--heatmap-stride", type=int, default=d["heatmap_stride"])
    p.add_argument(
        "--forget-bias-sweep",
        default=",".join(f"{b:g}" for b in d["forget_biases"]),
        help="forget biases for the lstm sweep against theory ('' to skip)",
    )
    p.add_argument(
        "--lstm-forget-biases",
        default=",".join(f"{b:g}" for b in d["lstm_forget_biases"]),
        help="the lstm again with each of these forget biases, beside the cells ('' for none)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the default sizes)")
    p.add_argument("--out", default="out/flow", help="output folder")
    p.set_defaults(func=_run)
