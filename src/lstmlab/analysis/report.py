"""report.html for the gradient-flow study: each figure with a sentence or two, and the
numbers in one table."""
from __future__ import annotations

import html
import math


def _num(v, fmt="{:.3g}"):
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "&infin;" if v is not None else "&mdash;"
    return fmt.format(v)


TEXT = {
    "gradient_by_lag.png": (
        "Error from a loss on the last step, measured at every earlier step",
        "Each line is the norm of the gradient of L = &lt;u, h_T&gt; with respect to the whole "
        "state s_t (h and c), divided by its value at the last step, against the lag T &minus; t. "
        "A straight line on this log axis is exponential decay; its slope is the decay rate "
        "in the table. The plain RNNs (dashed) fall below {thr:g} within a few dozen steps. "
        "The 1997 LSTM stays flat: its truncated gradient runs only along the Constant Error "
        "Carousel, where d c_t / d c_(t-1) = 1 exactly. The forget-gate LSTMs decay at a rate "
        "set by their forget gates: they vanish too, just more slowly once the forget bias is large."),
    "lag_heatmaps.png": (
        "Lag Jacobians d s_t' / d s_t for every pair of steps",
        "Colour is log10 of the spectral norm of the product of step Jacobians from t to t' "
        "(the largest factor by which any error at t' can reach t). Bright along the diagonal "
        "only: memory is short. Bright far from the diagonal: error survives long lags."),
    "lyapunov.png": (
        "Lyapunov spectra of the backward dynamics",
        "The exponents are the long-run per-step growth rates of error along orthogonal "
        "directions (Benettin's QR method over the exact step Jacobians). The largest one sets "
        "the memory horizon: a gradient falls by a factor e in 1/|&lambda;<sub>1</sub>| steps. An "
        "exponent of 0 (the 1997 cell's carousel) means no decay at all."),
    "cell_path.png": (
        "How much of the cell-to-cell Jacobian the cell-state path carries",
        "Left: of the c &rarr; c block of each lag Jacobian, the share carried by the product of "
        "forget gates alone, ||&prod; diag f|| / (||&prod; diag f|| + ||rest||) with Frobenius norms; 1 "
        "means every path of the error runs along the carousel. Right: that path's spectral norm "
        "against the full lag Jacobian's."),
    "theory.png": (
        "The one-dimensional picture, in closed form",
        "Left: the per-step factor w a'(w h) of a 1-D RNN. Middle: the best any weight can do "
        "for a given activation h: 0.2239/|h| for the sigmoid, 0.448/|h| for tanh; error is carried "
        "without loss only while the unit stays near 0, which a weight big enough to matter "
        "prevents. Right: an LSTM cell carries error with the factor &sigma;(b) of its forget gate, "
        "so the horizon grows without bound with the forget bias b (markers: our measurement, "
        "the carousel alone and the full state, whose h-paths add to the carousel)."),
}


def write_report(results, figures, path_write) -> str:
    cfg = results["config"]
    rows = []
    for cell, r in results["cells"].items():
        g = r["grad_by_lag"]
        at = lambda k: _num(g[k], "{:.1e}") if k < len(g) else "&mdash;"  # noqa: E731
        rows.append(
            f"<tr><td><b>{html.escape(cell)}</b></td><td>{html.escape(r['summary'])}</td>"
            f"<td>{_num(r['decay_rate'] + 0.0, '{:+.4f}')}</td><td>{_num(r['decay_rate_fit'], '{:+.4f}')}</td>"
            f"<td>{_num(r['horizon_e'], '{:.1f}')}</td><td>{_num(r['horizon_1e-6'], '{:.1f}')}</td>"
            f"<td>{_num(r['horizon_empirical'], '{}') if r['horizon_empirical'] is not None else '&gt;' + str(cfg['steps'] - 1)}</td>"
            f"<td>{at(10)}</td><td>{at(50)}</td><td>{at(cfg['steps'] - 1)}</td></tr>")
    sweep = ""
    if results.get("forget_bias_sweep"):
        srows = "".join(
            f"<tr><td>{r['forget_bias']:g}</td><td>{r['theory_log_sigma']:+.4f}</td>"
            f"<td>{r['cell_path_top']:+.4f}</td><td>{r['lyapunov_top']:+.4f}</td>"
            f"<td>{_num(r['horizon_1e-6'], '{:.0f}')}</td></tr>"
            for r in results["forget_bias_sweep"]["rows"])
        sweep = ("<h2>The forget-gate bias decides the answer (cell lstm)</h2><table><tr><th>bias b</th>"
                 "<th>theory log &sigma;(b)</th><th>measured: cell path alone</th>"
                 "<th>measured: top exponent, full state</th><th>horizon (1e-6), steps</th></tr>"
                 f"{srows}</table><p>The carousel alone follows the 1-D theory, up to the spread the "
                 "input adds to the forget gates. The full state's top exponent is larger: error also "
                 "travels through h and the recurrent weights, and with a large forget bias that "
                 "feedback can make the backward dynamics grow (positive exponent) rather than decay.</p>")
    figs = "".join(
        f"<h2>{TEXT[f][0]}</h2><img src='{f}' alt='{TEXT[f][0]}'><p>{TEXT[f][1].format(thr=cfg['threshold'])}</p>"
        for f in figures)
    setup = (f"hidden {cfg['hidden']}, {cfg['steps']} steps, batch {cfg['batch']}, input size "
             f"{cfg['input_size']}, init {cfg['init']!r}, forget bias "
             f"{'default (as init)' if cfg['forget_bias'] is None else cfg['forget_bias']}, seed {cfg['seed']}, float64")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>lstmlab gradient-flow study</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:nth-child(2){{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Why error vanishes in an RNN and not (or more slowly) in an LSTM</h1>
<p>Freshly initialised networks ({html.escape(setup)}), driven by Gaussian input; a loss on the
last step is backpropagated and measured at every earlier step. All numbers are in flow.json.</p>
<table><tr><th>cell</th><th>defining change</th><th>decay / step (&minus;&lambda;<sub>1</sub>)</th>
<th>decay / step (fit)</th><th>horizon e</th><th>horizon 1e-6</th><th>measured horizon 1e-6</th>
<th>gradient at lag 10</th><th>lag 50</th><th>lag {cfg['steps'] - 1}</th></tr>{''.join(rows)}</table>
<p>Decay per step: &minus;&lambda;<sub>1</sub> from the Lyapunov spectrum, and the least-squares
slope of the measured log-gradient against lag; the two agree when the decay is exponential.
Horizons: steps until the gradient falls by e or by 1e-6 at rate &lambda;<sub>1</sub>; measured:
the first lag where the measured gradient is below 1e-6.</p>
{sweep}{figs}</body></html>
"""
    path_write(doc)
    return doc
