"""`lstmlab flow-report RUN_DIR [RUN_DIR ...]`: what `train --flow-every` measured, over
training, for one run or several side by side (e.g. LSTM against tanh RNN).

Figures: the gradient against the lag at every probe (a heatmap per run, the task's lag
marked), the memory horizon against sequences seen for all runs on one axis beside the
learning curve, and the forget- and input-gate activation histograms over training.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..io import check_writable, write_text
from .plots import DASHES, MARKERS, _save, colours
from .watch import FLOW_FILE

LAG_PARAMS = ("p", "T")  # the task parameter that is its lag: the 1997 lag tasks' p, else T


def task_lag(task_params: dict) -> int | None:
    """The time lag a task asks the network to bridge (its p, else its T), or None."""
    for k in LAG_PARAMS:
        if isinstance(task_params.get(k), int):
            return task_params[k]
    return None


def load_run(run_dir) -> dict:
    """flow.json of a run directory, with its eval curve from metrics.jsonl and a label."""
    run_dir = Path(run_dir)
    path = run_dir / FLOW_FILE
    if not path.exists():
        raise ValueError(
            f"RUN_DIR {str(run_dir)!r} has no {FLOW_FILE}; allowed: the --out folder of a "
            "`lstmlab train ... --flow-every N` run"
        )
    try:
        run = json.loads(path.read_text())
        records = run["records"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
    if not records:
        raise ValueError(f"{path} holds no measurements yet")
    evals = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("event") == "eval":
                evals.append((r["sequences"], r["correct"]))
    label = f"{run['cell']} H={run['hidden_size']}"
    config = run_dir / "config.json"
    if config.exists():  # the initial biases tell runs of one cell apart
        c = json.loads(config.read_text())
        for key, name in (("forget_bias", "forget bias"), ("input_bias", "input bias")):
            if c.get(key) is not None:
                label += f", {name} {c[key]:g}"
    run.update(dir=str(run_dir), evals=evals, lag=task_lag(run["task_params"]), label=label)
    return run


def _labels(runs):
    seen = {}
    for r in runs:
        seen[r["label"]] = seen.get(r["label"], 0) + 1
    for r in runs:
        if seen[r["label"]] > 1:
            r["label"] += f" ({Path(r['dir']).name})"


def _run_colours(runs):
    """The cell's colour of the flow study (runs of one cell differ in dashes and markers)."""
    by_cell = colours([r["cell"] for r in runs])
    return [by_cell[r["cell"]] for r in runs]


def heatmaps(runs, path):
    n = len(runs)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 1, 4.2), squeeze=False, layout="constrained")
    for ax, r, col in zip(axes[0], runs, _run_colours(runs)):
        recs = r["records"]
        T = max(len(x["grad_log10"]) for x in recs)
        z = np.full((len(recs), T), np.nan)
        for k, x in enumerate(recs):
            z[k, : len(x["grad_log10"])] = x["grad_log10"]
        seqs = [x["sequences"] for x in recs]
        y = np.arange(len(recs))
        im = ax.imshow(
            np.clip(z, -12, 2),
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=-12,
            vmax=2,
            extent=(-0.5, T - 0.5, -0.5, len(recs) - 0.5),
            interpolation="nearest",
        )
        hz = [x["horizon_measured"] for x in recs]
        ax.plot(
            [np.nan if h is None else h for h in hz],
            y,
            color="cyan",
            marker="o",
            markersize=3,
            linewidth=1,
            label=f"measured: falls below {r['threshold']:g}",
        )
        ly = [x["horizon_lyapunov"] for x in recs]
        ax.plot(
            [np.nan if h is None or h > T else h for h in ly],
            y,
            color="lime",
            marker="s",
            markersize=3,
            linewidth=1,
            linestyle="--",
            label="memory horizon (Lyapunov)",
        )
        if r["lag"] is not None:
            ax.axvline(r["lag"], color="white", linestyle="--", linewidth=1.2, label=f"task lag {r['lag']}")
        ticks = np.unique(np.linspace(0, len(recs) - 1, min(6, len(recs))).astype(int))
        ax.set_yticks(ticks, [f"{seqs[t]:,}" for t in ticks])
        ax.set_xlabel("lag T - t (steps back from the loss)")
        ax.set_ylabel("sequences seen")
        ax.set_title(r["label"], color=col)
        ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(im, ax=axes, shrink=0.85, label="log10 ||dL/ds_t|| / ||dL/ds_T|| (clipped to [-12, 2])")
    fig.suptitle("The gradient against the lag as the network learns")
    _save(fig, path)


def horizons(runs, path):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.6))
    top = 10 ** math.ceil(
        math.log10(
            max([x["horizon_lyapunov"] or 1 for r in runs for x in r["records"]] + [r["lag"] or 1 for r in runs] + [10])
        )
        + 0.3
    )
    for i, (r, col) in enumerate(zip(runs, _run_colours(runs))):
        recs = r["records"]
        s = np.array([x["sequences"] for x in recs])
        meas = np.array([np.nan if x["horizon_measured"] is None else x["horizon_measured"] for x in recs], float)
        ly = np.array([np.nan if x["horizon_lyapunov"] is None else x["horizon_lyapunov"] for x in recs], float)
        kw = dict(color=col, marker=MARKERS[i % len(MARKERS)], linestyle=DASHES[i % len(DASHES)], alpha=0.9)
        a1.plot(s, ly, label=f"{r['label']}: from the top Lyapunov exponent", **kw)
        grows = np.array([x["lyapunov_status"] != "decays" for x in recs])
        if grows.any():  # no horizon: the gradient does not decay. Drawn at the top, marked
            a1.plot(
                s[grows],
                np.full(grows.sum(), top),
                marker=r"$\uparrow$",
                linestyle="none",
                color=col,
                markersize=12,
                label=f"{r['label']}: does not decay (growing or constant)",
            )
        a1.plot(
            s,
            meas,
            color=col,
            linestyle=":",
            linewidth=1.2,
            label=f"{r['label']}: measured, first lag below {r['threshold']:g}",
        )
        if r["evals"]:
            e = np.array(r["evals"], float)
            a2.plot(e[:, 0], e[:, 1], **{**kw, "marker": None}, label=r["label"])
    lags = sorted({r["lag"] for r in runs if r["lag"] is not None})
    for lag in lags:
        a1.axhline(lag, color="grey", linestyle="--", linewidth=1)
        a1.text(a1.get_xlim()[0], lag, f" task lag {lag}", va="bottom", color="grey", fontsize=8)
    a1.set_yscale("log")
    a1.set_xlabel("sequences seen")
    a1.set_ylabel(f"memory horizon (steps until error falls by {runs[0]['threshold']:g})")
    a1.set_title("Memory horizon as the network learns")
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    a2.set_xlabel("sequences seen")
    a2.set_ylabel("fraction of evaluation sequences correct")
    a2.set_title("Learning curve")
    a2.set_ylim(-0.02, 1.02)
    if any(r["evals"] for r in runs):
        a2.legend(fontsize=8)
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
    _save(fig, path)


def gates(runs, path):
    lstm = [r for r in runs if "f_hist" in r["records"][0]]
    if not lstm:
        return False
    fig, axes = plt.subplots(2, len(lstm), figsize=(4.6 * len(lstm) + 1, 7), squeeze=False, layout="constrained")
    for j, r in enumerate(lstm):
        recs = r["records"]
        seqs = [x["sequences"] for x in recs]
        for i, (gate, name) in enumerate([("f", "forget"), ("i", "input")]):
            ax = axes[i, j]
            z = np.array([x[f"{gate}_hist"] for x in recs])
            im = ax.imshow(
                np.log10(np.maximum(z, 1e-4)),
                origin="lower",
                aspect="auto",
                cmap="viridis",
                vmin=-4,
                vmax=0,
                extent=(0, 1, -0.5, len(recs) - 0.5),
                interpolation="nearest",
            )
            ax.plot([x[f"{gate}_mean"] for x in recs], np.arange(len(recs)), color="white", linewidth=1, label="mean")
            ticks = np.unique(np.linspace(0, len(recs) - 1, min(6, len(recs))).astype(int))
            ax.set_yticks(ticks, [f"{seqs[t]:,}" for t in ticks])
            ax.set_xlabel(f"{name}-gate activation")
            ax.set_ylabel("sequences seen")
            ax.set_title(f"{r['label']}: {name} gate", fontsize=10)
            ax.legend(fontsize=7, loc="upper left")
    fig.colorbar(im, ax=axes, shrink=0.8, label="log10 fraction of activations (steps x units x probes)")
    fig.suptitle("Gate activations over training (probe batch)")
    _save(fig, path)
    return True


FIGURES = {"flow_horizon.png": horizons, "flow_heatmaps.png": heatmaps, "flow_gates.png": gates}
TEXT = {
    "flow_horizon.png": (
        "Memory horizon as the network learns",
        "Left: for each run, the memory horizon: the number of steps over which error carried back "
        "through the recurrence falls by the threshold factor at the rate of the top Lyapunov exponent "
        "of the backward dynamics (solid, markers; a triangle at the top where it does not decay at "
        "all). Dotted, same colour: the first lag at which the measured gradient of a loss on the last "
        "step is below the threshold; it can be much shorter when little error enters the cell state "
        "at the loss (a closed or saturated output gate), however far that error is then carried. "
        "The dashed grey line is the lag the task asks the network to bridge: a network whose horizon "
        "stays below it cannot be taught by gradient descent what happened that long ago. Right: the "
        "learning curve from metrics.jsonl.",
    ),
    "flow_heatmaps.png": (
        "The gradient against the lag at every probe",
        "Each row is one probe during training (sequences seen on the left axis); colour is log10 of "
        "the gradient reaching lag T &minus; t, relative to the last step. The cyan line marks where it "
        "falls below the threshold, the dashed green line the memory horizon from the top Lyapunov "
        "exponent (where it lies within the lags shown); the dashed white line the task's lag.",
    ),
    "flow_gates.png": (
        "Forget- and input-gate activations over training",
        "Histograms over all steps, units and probe sequences, one row per probe (log colour scale), "
        "with the mean in white. Forget gates that move towards 1 carry error further back: "
        "the cell state multiplies it by f at every step.",
    ),
}


def summary_rows(runs) -> str:
    rows = []
    for r in runs:
        first, last = r["records"][0], r["records"][-1]

        def h(x):
            status = {"growing": "growing", "constant": "&infin; (no decay)"}.get(x["lyapunov_status"])
            return status or f"{x['horizon_lyapunov']:.0f}"

        fm = lambda x: f"{x['f_mean']:.3f}" if "f_mean" in x else "&mdash;"
        acc = f"{r['evals'][-1][1]:.3f}" if r["evals"] else "&mdash;"
        rows.append(
            f"<tr><td><b>{html.escape(r['label'])}</b></td><td>{html.escape(r['task'])} "
            f"{html.escape(json.dumps(r['task_params']))}</td><td>{'&mdash;' if r['lag'] is None else r['lag']}</td>"
            f"<td>{last['sequences']:,}</td><td>{h(first)}</td><td>{h(last)}</td>"
            f"<td>{first['lyapunov_top']:+.4f}</td><td>{last['lyapunov_top']:+.4f}</td>"
            f"<td>{fm(first)}</td><td>{fm(last)}</td><td>{acc}</td>"
            f"<td>{np.mean([x['seconds'] for x in r['records']]):.2f}</td></tr>"
        )
    return "".join(rows)


def write_flow_report(run_dirs, out) -> list[str]:
    runs = [load_run(d) for d in run_dirs]
    _labels(runs)
    out = Path(out)
    drawn = [name for name, fn in FIGURES.items() if fn(runs, out / name) is not False]
    figs = "".join(f"<h2>{TEXT[f][0]}</h2><img src='{f}' alt='{TEXT[f][0]}'><p>{TEXT[f][1]}</p>" for f in drawn)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>lstmlab flow report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,td:nth-child(2){{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Error flow during training</h1>
<p>Runs: {", ".join(html.escape(r["dir"]) for r in runs)}. Measured by <code>lstmlab train ... --flow-every N</code>
on a fixed probe batch (see lstmlab.analysis.watch).</p>
<table><tr><th>run</th><th>task</th><th>task lag</th><th>sequences</th><th>horizon at start</th>
<th>horizon at end</th><th>top exponent at start</th><th>at end</th><th>mean forget gate at start</th>
<th>at end</th><th>last eval correct</th><th>seconds per probe</th></tr>{summary_rows(runs)}</table>
{figs}</body></html>
"""
    write_text(out / "report.html", doc)
    return ["report.html", *drawn]


def _run(args) -> int:
    out = check_writable(args.out, "--out")
    written = write_flow_report(args.run_dirs, out)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "flow-report",
        help="figures of the error flow measured by train --flow-every, for one run or several side by side",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="--out folders of train --flow-every runs")
    p.add_argument("--out", default="out/flow-report", help="output folder")
    p.set_defaults(func=_run)
