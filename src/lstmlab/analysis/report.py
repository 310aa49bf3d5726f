"""report.html for the gradient-flow study: the answer in words (computed from the
measured numbers; a paragraph for each modern cell studied) and the main figure first, then
each figure with a sentence or two, and the numbers in one table."""

from __future__ import annotations

import html
import math

from .. import theory


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
        "in the table. Every entry has its own colour (the same in every figure), dash pattern "
        "and marker, so lines that coincide (lstm and vanilla are the same cell) stay visible. "
        "&ldquo;never below&rdquo; in the legend: the gradient did not fall below {thr:g} within "
        "the lags measured; &ldquo;growing&rdquo;: it is larger at the longest lag than at the loss.",
    ),
    "lag_heatmaps.png": (
        "Lag Jacobians d s_t' / d s_t for every pair of steps",
        "Colour is log10 of the spectral norm of the product of step Jacobians from t to t' "
        "(the largest factor by which any error at t' can reach t). Bright along the diagonal "
        "only: memory is short. Bright far from the diagonal: error survives long lags.",
    ),
    "lyapunov.png": (
        "Lyapunov spectra of the backward dynamics",
        "The exponents are the long-run per-step growth rates of error along orthogonal "
        "directions (Benettin's QR method over the exact step Jacobians). The largest one sets "
        "the memory horizon: a gradient falls by a factor e in 1/|&lambda;<sub>1</sub>| steps. An "
        "exponent of 0 (the 1997 cell's carousel) means no decay at all.",
    ),
    "cell_path.png": (
        "How much of the cell-to-cell Jacobian the cell-state path carries",
        "Error can travel from c<sub>t'</sub> back to c<sub>t</sub> along two kinds of path: straight "
        "down the carousel, multiplied by the forget gate at every step (&prod; diag f), or out "
        "through h and the recurrent weights and back into c. Left: the share of the c &rarr; c "
        "block of each lag Jacobian carried by the carousel alone, "
        "||&prod; diag f|| / (||&prod; diag f|| + ||rest||) with Frobenius norms; 1 means every path "
        "runs along the carousel. Right: the carousel's spectral norm (coloured line) against the "
        "full lag Jacobian's (dotted, same colour): where the dotted line lies above, the h-paths "
        "carry more than the carousel. {cellpath}",
    ),
    "theory.png": (
        "The one-dimensional picture, in closed form",
        "Left: the per-step factor w a'(w h) of a 1-D RNN. Middle: the best any weight can do "
        "for a given activation h: 0.2239/|h| for the sigmoid, 0.448/|h| for tanh; error is carried "
        "without loss only while the unit stays near 0, which a weight big enough to matter "
        "prevents. Right: an LSTM cell carries error with the factor &sigma;(b) of its forget gate, "
        "so the horizon grows without bound with the forget bias b (markers: our measurement, "
        "the carousel alone and the full state, whose h-paths add to the carousel; a triangle at "
        "the top marks a forget bias at which the full state's gradient grows with the lag, so "
        "that it has no horizon at all).",
    ),
}


def horizon_words(r: dict, cfg: dict) -> str:
    """When the measured gradient falls below the threshold, in words: measured within the
    lags of the study, else extrapolated from the top Lyapunov exponent, or why never."""
    thr, longest = cfg["threshold"], cfg["steps"] - 1
    if r["horizon_empirical"] is not None:
        return f"after {r['horizon_empirical']} steps"
    if r.get("measured_status") == "growing" or r.get("lyapunov_status") == "growing":
        return f"never: it grows with the lag (top Lyapunov exponent {r['lyapunov_top']:+.4f} per step)"
    if r.get("lyapunov_status") == "constant":
        return (
            f"never: it neither decays nor grows (top Lyapunov exponent {r['lyapunov_top']:+.1e}); at lag "
            f"{longest} it is still {r['grad_by_lag'][-1]:.2g} of its value at the loss"
        )
    return (
        f"after about {r['horizon_1e-6']:.0f} steps (extrapolated from the top Lyapunov exponent, "
        f"{r['lyapunov_top']:+.4f} per step; it stays above {thr:g} over the {longest} lags measured)"
    )


def _steps(r: dict) -> float:
    """A comparable horizon: measured if reached, else from the Lyapunov exponent (inf if none)."""
    if r["horizon_empirical"] is not None:
        return r["horizon_empirical"]
    return math.inf if r["horizon_1e-6"] is None else r["horizon_1e-6"]


def conclusion(results: dict) -> str:
    """The answer to the study's question, as HTML paragraphs, every number from `results`."""
    cfg, cells = results["config"], results["cells"]
    thr = cfg["threshold"]
    out = []
    rnns = [c for c in cells if c.startswith("rnn-")]
    default = cells.get("lstm")
    variants = [(c, r) for c, r in cells.items() if c.startswith("lstm, forget bias")]
    if rnns:
        best = max(rnns, key=lambda c: _steps(cells[c]))
        words = "; ".join(f"{html.escape(c)}: {horizon_words(cells[c], cfg)}" for c in rnns)
        out.append(
            f"<b>Plain RNNs lose the error within a few dozen steps.</b> The gradient of a loss "
            f"on the last step falls below {thr:g} of its value ({words}). The longest-lived, "
            f"{html.escape(best)}, decays by a factor e every {cells[best]['horizon_e']:.1f} steps."
        )
    if default is not None:
        fb = default["forget_bias"]
        text = (
            f"<b>At the default initialisation the LSTM is "
            f"{'not much better' if rnns and _steps(default) < 2 * max(_steps(cells[c]) for c in rnns) else 'better'}"
            f".</b> With its forget-gate bias {'as initialised' if fb is None else f'at {fb:g}'}, the "
            f"lstm's gradient falls below {thr:g} {horizon_words(default, cfg)}"
        )
        if "rnn-tanh" in cells:
            text += f"; the tanh RNN's {horizon_words(cells['rnn-tanh'], cfg)}"
        if "forget_gate_mean" in default:
            text += (
                f". Its forget gates average {default['forget_gate_mean']:.2f}, so the cell state "
                "shrinks the carried error at every step much as an RNN's small per-step factor does"
            )
        out.append(text + ".")
    if variants:
        parts = []
        for _, r in variants:
            b = r["forget_bias"]
            parts.append(
                f"With a forget bias of {b:g} (&sigma;({b:g}) = {theory.lstm_factor(b):.3f}) the same "
                f"LSTM's gradient falls below {thr:g} {horizon_words(r, cfg)}."
            )
        out.append("<b>The forget gate is the answer.</b> " + " ".join(parts))
    tanh = theory.max_rnn_factor(1.0, "tanh")[1]
    sig = theory.max_rnn_factor(1.0, "sigmoid")[1]
    out.append(
        f"<b>Why.</b> A plain RNN carries error back one step with the factor w a'(w h). For a "
        f"previous activation h no weight w makes it larger than {sig:.3f}/|h| for the sigmoid or "
        f"{tanh:.3f}/|h| for tanh (theory figure): it can reach 1 only while |h| stays below "
        f"{sig:.3f} (sigmoid) or {tanh:.3f} (tanh), where the unit hardly passes anything on, so "
        f"over a lag of n steps the error shrinks like a factor below 1 to the n-th power. The "
        f"LSTM's cell state carries it with the factor &sigma;(v) of its forget-gate input v, "
        f"which can be held as near 1 as one likes (&sigma;(10) = {theory.lstm_factor(10.0):.5f}): "
        f"a large forget bias at the start, or forget-gate inputs learned large, gives a long horizon."
    )
    if "lstm1997" in cells:
        r = cells["lstm1997"]
        out.append(
            f"The 1997 LSTM, which has no forget gate and truncates the gradient to the carousel, "
            f"loses nothing along it: at lag {cfg['steps'] - 1} its gradient is still "
            f"{r['grad_by_lag'][-1]:.2g} of the last step's, the same as at lag 1, and its top "
            f"Lyapunov exponent is {r['lyapunov_top']:+.1e}."
        )
    out += modern_words(results)
    sweep = (results.get("forget_bias_sweep") or {}).get("rows", [])
    grow = [r for r in sweep if r.get("lyapunov_status") == "growing"]
    if grow:
        items = [f"b = {r['forget_bias']:g} (top exponent {r['lyapunov_top']:+.4f})" for r in grow]
        listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        out.append(
            "A forget bias can also be too large: at "
            + listed
            + " the full state's gradient is growing (larger the further back, so it has no "
            "horizon), although the carousel alone still "
            "decays slowly; the paths through h and the recurrent weights add to it."
        )
    return "".join(f"<p>{p}</p>" for p in out)


def modern_words(results: dict) -> list[str]:
    """A paragraph per modern cell in the study (slstm, minlstm, mingru): what carries its
    error back, and how fast it fell here, every number from `results`."""
    cfg, cells = results["config"], results["cells"]
    thr = cfg["threshold"]
    out = []
    r = cells.get("slstm")
    if r is not None and "ratio_carry_mean" in r:
        out.append(
            "<b>sLSTM</b> carries its stabilised c and n with f&prime; = exp(log f + m<sub>t&minus;1</sub> "
            "&minus; m<sub>t</sub>), which never exceeds 1, since the stabiliser m<sub>t</sub> = max(log f + "
            "m<sub>t&minus;1</sub>, log i) &ge; log f + m<sub>t&minus;1</sub>; the paper's unstabilised "
            "forget factor f can exceed 1 (an exponential forget gate with a positive input), but then c and n "
            "grow together. What h = o c/n sees is the ratio c/n, a running average carried with "
            "f&prime; n<sub>t&minus;1</sub>/n<sub>t</sub> &lt; 1 (the new input always takes a share). Here "
            f"f&prime; averages {r['carry_mean']:.2f} and the ratio's factor {r['ratio_carry_mean']:.2f}; "
            f"the gradient falls below {thr:g} {horizon_words(r, cfg)}."
        )
    for name, gate, what in (
        ("minlstm", "f&prime; = f/(f + i)", "minLSTM"),
        ("mingru", "1 &minus; z", "minGRU"),
    ):
        r = cells.get(name)
        if r is None or "carry_mean" not in r:
            continue
        out.append(
            f"<b>{what}</b>'s error flows back only along h, multiplied at every step by {gate} (averaging "
            f"{r['carry_mean']:.2f} here): its gates see the input alone, so no error goes through them "
            "&mdash; the structure of the 1997 truncated gradient, but exact, not truncated. Its step "
            "Jacobian is that diagonal, so its Lyapunov exponents are each unit's mean log carry (top "
            f"{r['lyapunov_top']:+.4f} per step) and the gradient falls below {thr:g} {horizon_words(r, cfg)}."
        )
    return out


def cell_path_words(results: dict) -> str:
    """What the cell-path figure shows, from the numbers."""
    out = []
    for c, r in results["cells"].items():
        cp = r.get("cell_path")
        if not cp or not cp["lags"]:
            continue
        lags, share = cp["lags"], cp["share"]
        far = min(range(len(lags)), key=lambda k: abs(lags[k] - 50))
        out.append(f"{html.escape(c)}: {share[0]:.0%} at lag {lags[0]}, {share[far]:.0%} at lag {lags[far]}")
    if not out:
        return ""
    return (
        "Measured share carried by the carousel: " + "; ".join(out) + ". With the truncated gradient "
        "(lstm1997) the carousel is the only path. With forget gates near 0.5 the carousel's product "
        "dies fastest, and what error survives long lags has gone through h; a larger forget bias "
        "keeps the carousel's share up for longer."
        + (
            " For the sLSTM the carousel is its stabilised c, carried with f&prime; (&le; 1)."
            if "slstm" in results["cells"]
            else ""
        )
    )


def _horizon_cell(r: dict, key: str, fmt: str) -> str:
    if r[key] is not None:
        return _num(r[key], fmt)
    return {"growing": "growing", "constant": "&infin; (no decay)"}.get(r.get("lyapunov_status"), "&infin;")


def _measured_cell(r: dict, cfg: dict) -> str:
    if r["horizon_empirical"] is not None:
        return str(r["horizon_empirical"])
    return "growing" if r.get("measured_status") == "growing" else f"never below (&gt;{cfg['steps'] - 1})"


def write_report(results, figures, path_write) -> str:
    cfg = results["config"]
    thr = cfg["threshold"]
    rows = []
    for cell, r in results["cells"].items():
        g = r["grad_by_lag"]
        at = lambda k, g=g: _num(g[k], "{:.1e}") if k < len(g) else "&mdash;"
        rows.append(
            f"<tr><td><b>{html.escape(cell)}</b></td><td>{html.escape(r['summary'])}</td>"
            f"<td>{_num(r['decay_rate'] + 0.0, '{:+.4f}')}</td><td>{_num(r['decay_rate_fit'], '{:+.4f}')}</td>"
            f"<td>{_horizon_cell(r, 'horizon_e', '{:.1f}')}</td><td>{_horizon_cell(r, 'horizon_1e-6', '{:.1f}')}</td>"
            f"<td>{_measured_cell(r, cfg)}</td>"
            f"<td>{at(10)}</td><td>{at(50)}</td><td>{at(cfg['steps'] - 1)}</td></tr>"
        )
    sweep = ""
    if results.get("forget_bias_sweep"):
        srows = "".join(
            f"<tr><td>{r['forget_bias']:g}</td><td>{r['theory_log_sigma']:+.4f}</td>"
            f"<td>{r['cell_path_top']:+.4f}</td><td>{r['lyapunov_top']:+.4f}</td>"
            f"<td>{_horizon_cell(r, 'horizon_1e-6', '{:.0f}')}</td></tr>"
            for r in results["forget_bias_sweep"]["rows"]
        )
        sweep = (
            "<h2>The forget-gate bias decides the answer (cell lstm)</h2><table><tr><th>bias b</th>"
            "<th>theory log &sigma;(b)</th><th>measured: cell path alone</th>"
            "<th>measured: top exponent, full state</th><th>horizon (1e-6), steps</th></tr>"
            f"{srows}</table><p>The carousel alone follows the 1-D theory, up to the spread the "
            "input adds to the forget gates. The full state's top exponent is larger: error also "
            "travels through h and the recurrent weights, and with a large forget bias that "
            "feedback can make the backward dynamics grow (positive exponent, &ldquo;growing&rdquo;: "
            "no horizon) rather than decay.</p>"
        )
    words = {"thr": thr, "cellpath": cell_path_words(results)}

    def fig(f):
        return f"<h2>{TEXT[f][0]}</h2><img src='{f}' alt='{TEXT[f][0]}'><p>{TEXT[f][1].format(**words)}</p>"

    main = "gradient_by_lag.png"
    first = fig(main) if main in figures else ""
    figs = "".join(fig(f) for f in figures if f != main)
    setup = (
        f"hidden {cfg['hidden']}, {cfg['steps']} steps, batch {cfg['batch']}, input size "
        f"{cfg['input_size']}, init {cfg['init']!r}, forget bias "
        f"{'default (as init)' if cfg['forget_bias'] is None else cfg['forget_bias']}, seed {cfg['seed']}, float64"
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>lstmlab gradient-flow study</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:nth-child(2){{text-align:left}}img{{max-width:100%}}
.answer{{background:#f6f6f0;border-left:4px solid #9467bd;padding:0.3em 1em}}</style></head><body>
<h1>Why error vanishes in an RNN and not (or more slowly) in an LSTM</h1>
<p>Freshly initialised networks ({html.escape(setup)}), driven by Gaussian input; a loss on the
last step is backpropagated and measured at every earlier step. All numbers are in flow.json.</p>
<h2>The answer</h2><div class="answer">{conclusion(results)}</div>
{first}
<h2>The numbers</h2>
<table><tr><th>cell</th><th>defining change</th><th>decay / step (&minus;&lambda;<sub>1</sub>)</th>
<th>decay / step (fit)</th><th>horizon e</th><th>horizon 1e-6</th><th>measured horizon 1e-6</th>
<th>gradient at lag 10</th><th>lag 50</th><th>lag {cfg["steps"] - 1}</th></tr>{"".join(rows)}</table>
<p>Decay per step: &minus;&lambda;<sub>1</sub> from the Lyapunov spectrum, and the least-squares
slope of the measured log-gradient against lag; the two agree when the decay is exponential.
Horizons: steps until the gradient falls by e or by {thr:g} at rate &lambda;<sub>1</sub>
(&ldquo;growing&rdquo;: &lambda;<sub>1</sub> &gt; 0, the gradient grows with the lag and never falls);
measured: the first lag where the measured gradient is below {thr:g} (&ldquo;never below&rdquo;:
not within the lags measured).</p>
{sweep}{figs}</body></html>
"""
    path_write(doc)
    return doc
