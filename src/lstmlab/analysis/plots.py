"""Figures of the gradient-flow study, drawn from its results dict (flow.json)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import theory
from ..io import atomic_write

FLOOR = -300  # log10 of what we draw as "vanished"


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


# One colour per cell (or study entry) in every figure; entries not listed take the next
# free colour of a fixed list, in the order of the results, so a figure never guesses.
COLOURS = {
    "rnn-tanh": "#1f77b4",
    "rnn-sigmoid": "#ff7f0e",
    "rnn-relu": "#2ca02c",
    "lstm1997": "#d62728",
    "lstm": "#9467bd",
    "vanilla": "#8c564b",
    "gru": "#e377c2",
    "lstm, forget bias 1": "#17becf",
    "lstm, forget bias 2": "#000000",
    "slstm": "#006d2c",
    "minlstm": "#b8860b",
    "mingru": "#4b0082",
}
SPARE = ("#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")
MARKERS = "os^vDP*Xhp<>"
# lines that may lie on top of each other stay visible: different dashes, sparse markers,
# thinner and translucent for the later ones
DASHES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 2)), (0, (1, 1)), (0, (6, 2, 1, 2))]


def colours(names) -> dict:
    spare = iter(c for c in SPARE)
    return {n: COLOURS[n] if n in COLOURS else next(spare, "#7f7f7f") for n in names}


def styles(names, n_points: int) -> dict:
    """matplotlib keyword arguments per entry: its colour, a dash pattern and a marker
    every few points (offset per entry so markers of coinciding lines do not overlap)."""
    names = list(names)
    col = colours(names)
    every = max(1, n_points // 8)
    return {
        n: {
            "color": col[n],
            "linestyle": DASHES[i % len(DASHES)],
            "marker": MARKERS[i % len(MARKERS)],
            "markevery": (i * every // max(1, len(names)), every),
            "markersize": 5,
            "linewidth": 2.2 - 0.12 * i,
            "alpha": 0.9,
            "markerfacecolor": "none" if i % 2 else col[n],
        }
        for i, n in enumerate(names)
    }


def gradient_by_lag(results, path):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    st = styles(results["cells"], results["config"]["steps"])
    for cell, r in results["cells"].items():
        y = np.array(r["grad_by_lag"])
        status = {"growing": ", growing", "never_below_threshold": ", never below"}.get(r.get("measured_status"), "")
        ax.semilogy(np.arange(len(y)), np.maximum(y, 1e-300), label=cell + status, **st[cell])
    thr = results["config"]["threshold"]
    ax.axhline(thr, color="grey", linewidth=0.8, linestyle=":")
    ax.text(results["config"]["steps"] - 1, thr * 3, f"threshold {thr:g}", color="grey", ha="right")
    ax.set_xlabel("lag T - t (steps back from the loss)")
    ax.set_ylabel("||dL/ds_t|| / ||dL/ds_T||")
    ax.set_title("How much error from the last step reaches step t")
    ax.set_ylim(bottom=max(1e-60, ax.get_ylim()[0]), top=max(1e3, ax.get_ylim()[1]))
    ax.legend(ncol=2, fontsize=8, loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    _save(fig, path)


def heatmaps(results, path):
    cells = list(results["cells"])
    ncol = min(4, len(cells))
    nrow = math.ceil(len(cells) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.1 * nrow), squeeze=False, layout="constrained")
    for ax in axes.flat[len(cells) :]:
        ax.axis("off")
    for ax, cell in zip(axes.flat, cells):
        h = results["cells"][cell]["heatmap"]
        z = np.array([[np.nan if v is None else v for v in row] for row in h["log10_spectral"]])
        s, e = h["starts"], h["ends"]
        im = ax.imshow(
            np.clip(z, -20, 2),
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=-20,
            vmax=2,
            extent=(e[0], e[-1], s[0], s[-1]),
        )
        ax.set_title(cell, fontsize=10, color=colours(cells)[cell])
        ax.set_xlabel("t'")
        ax.set_ylabel("t")
    fig.colorbar(im, ax=axes, shrink=0.8, label="log10 ||d s_t' / d s_t||_2 (clipped to [-20, 2])")
    fig.suptitle("Lag Jacobian norms for every pair t < t'")
    _save(fig, path)


def lyapunov_spectra(results, path):
    fig, ax = plt.subplots(figsize=(8, 5))
    st = styles(results["cells"], 2 * results["config"]["hidden"])
    for cell, r in results["cells"].items():
        lam = np.array([FLOOR if v is None else v for v in r["lyapunov"]], dtype=float)
        lam = np.where(np.isfinite(lam), lam, FLOOR)
        kw = dict(
            st[cell],
            markevery=(
                st[cell]["markevery"][0] * len(lam) // max(1, 2 * results["config"]["hidden"]),
                max(1, len(lam) // 8),
            ),
        )
        ax.plot(np.arange(1, len(lam) + 1) / len(lam), lam, label=cell, **kw)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylim(-3, 0.5)
    ax.set_xlabel("exponent index / state size")
    ax.set_ylabel("Lyapunov exponent (per step, natural log)")
    ax.set_title("Lyapunov spectra of the backward dynamics (0 = no decay)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def cell_path(results, path):
    lstm_cells = {c: r for c, r in results["cells"].items() if "cell_path" in r}
    if not lstm_cells:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    st = styles(results["cells"], results["config"]["steps"] // results["config"]["heatmap_stride"])
    for cell, r in lstm_cells.items():
        cp, kw = r["cell_path"], st[cell]
        a1.plot(cp["lags"], cp["share"], label=cell, **kw)
        a2.plot(cp["lags"], cp["log10_cell_spectral"], label=f"{cell}: forget gates alone", **kw)
        off, every = kw["markevery"]
        a2.plot(
            r["lag_norm"]["lags"],
            r["lag_norm"]["log10_spectral"],
            color=kw["color"],
            linestyle=":",
            linewidth=1.4,
            alpha=0.9,
            marker=kw["marker"],
            markersize=4,
            markerfacecolor="none",
            markevery=(off + every // 2, every),
            label=f"{cell}: full lag Jacobian",
        )
    a1.set_ylim(-0.02, 1.02)
    a1.set_xlabel("lag")
    a1.set_ylabel("share of the c -> c product on the CEC")
    a1.set_title("Share carried by the cell-state path")
    a2.set_xlabel("lag")
    a2.set_ylabel("log10 spectral norm")
    a2.set_title("Cell path alone vs full lag Jacobian")
    a1.legend(fontsize=8)
    a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
    _save(fig, path)
    return True


def theory_figure(results, path):
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.3))
    col = colours(["rnn-sigmoid", "rnn-tanh", *results["cells"]])
    w = np.linspace(-12, 12, 801)
    for (act, h), ls in zip([("sigmoid", 0.5), ("tanh", 0.5), ("tanh", 0.2)], ["-", "--", ":"]):
        a1.plot(
            w,
            theory.rnn_factor(torch.from_numpy(w), h, act).numpy(),
            color=col[f"rnn-{act}"],
            linestyle=ls,
            label=f"{act}, h={h}",
        )
    a1.axhline(1, color="grey", linewidth=0.8)
    a1.set_xlabel("recurrent weight w")
    a1.set_ylabel("w a'(w h)")
    a1.set_title("1-D RNN: the per-step factor")
    a1.legend(fontsize=8)
    hs = np.linspace(0.05, 1, 200)
    for act in ("sigmoid", "tanh"):
        a2.plot(hs, [theory.max_rnn_factor(float(h), act)[1] for h in hs], color=col[f"rnn-{act}"], label=act)
    a2.axhline(1, color="grey", linewidth=0.8)
    a2.set_yscale("log")
    a2.set_xlabel("|h| (previous activation)")
    a2.set_ylabel("max over w of |w a'(w h)|")
    a2.set_title("Best any weight can do")
    a2.legend(fontsize=8)
    v = np.linspace(-2, 8, 200)
    lstm_colour = col.get("lstm", COLOURS["lstm"])
    a3.semilogy(
        v,
        [theory.horizon(theory.lstm_factor(float(b)), 1e-6) for b in v],
        color="black",
        label="theory: horizon of sigma(b)^n",
    )
    sweep = results.get("forget_bias_sweep")
    if sweep:
        rows = sweep["rows"]
        b = np.array([r["forget_bias"] for r in rows])
        cec = np.array([math.log(1e-6) / r["cell_path_top"] if r["cell_path_top"] < 0 else np.nan for r in rows])
        a3.semilogy(
            b, cec, "s", color=lstm_colour, markerfacecolor="none", markersize=8, label="measured: cell path alone"
        )
        grow = np.array([r.get("lyapunov_status") == "growing" for r in rows])
        hz = np.array([np.nan if r["horizon_1e-6"] is None else r["horizon_1e-6"] for r in rows])
        a3.semilogy(b[~grow], hz[~grow], "o", color=lstm_colour, label="measured: full state (Lyapunov)")
        if grow.any():  # no horizon: the gradient grows. Drawn at the top, marked as such
            top = 10 ** math.ceil(
                math.log10(max(np.nanmax(cec), np.nanmax(hz[~grow]) if (~grow).any() else 1, 1e4)) + 0.5
            )
            a3.semilogy(
                b[grow],
                np.full(grow.sum(), top),
                "^",
                color=lstm_colour,
                markersize=9,
                label="measured: full state grows (no horizon)",
            )
            for bb in b[grow]:
                a3.annotate(
                    "growing",
                    (bb, top),
                    textcoords="offset points",
                    xytext=(0, -16),
                    ha="center",
                    fontsize=8,
                    color=lstm_colour,
                )
    a3.set_xlabel("forget-gate bias b")
    a3.set_ylabel("steps until error falls by 1e-6")
    a3.set_title("LSTM: the forget gate sets the horizon")
    a3.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    for a in (a1, a2, a3):
        a.grid(True, alpha=0.3)
    _save(fig, path)


FIGURES = {
    "gradient_by_lag.png": gradient_by_lag,
    "lag_heatmaps.png": heatmaps,
    "lyapunov.png": lyapunov_spectra,
    "cell_path.png": cell_path,
    "theory.png": theory_figure,
}


def draw_all(results, out_dir) -> list[str]:
    drawn = []
    for name, fn in FIGURES.items():
        if fn(results, out_dir / name) is not False:
            drawn.append(name)
    return drawn
