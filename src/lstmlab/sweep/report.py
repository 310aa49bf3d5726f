"""`lstmlab sweep-report`: what Greff et al. report for a variant study.

Per variant: the distribution of the test metric over its COMPLETE trials (box plots),
Welch's t-test of each variant against vanilla (p-values, and Bonferroni-corrected over the
variants tested), fANOVA hyperparameter importance (Optuna's evaluator; per variant, and
pooled over all variants with the variant itself as a factor), and learning rate against
the metric.
"""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path

from ..extras import require
from ..io import atomic_write, write_json, write_text
from .storage import engine_url

optuna = require("optuna", "sweep", "lstmlab sweep-report")


def load(storage_url: str, study: str) -> dict[str, optuna.Study]:
    """Every study of the sweep `study` in the storage, by cell (names "{study}:{cell}")."""
    storage = optuna.storages.RDBStorage(engine_url(storage_url))
    prefix = f"{study}:"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(prefix)]
    if not names:
        raise ValueError(f"study={study!r} has no variants in {storage_url}; nothing to report")
    return {n[len(prefix) :]: optuna.load_study(study_name=n, storage=storage) for n in sorted(names)}


def _complete(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value (unequal variances)."""
    stats = require("scipy.stats", "sweep", "Welch's t-test in lstmlab sweep-report")
    res = stats.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def importances(trials, seed: int = 0) -> dict[str, float] | None:
    """fANOVA importance over the given COMPLETE trials (an in-memory study); None when
    there are too few trials or no variation to explain."""
    if len(trials) < 3 or len({t.value for t in trials}) < 2:
        return None
    study = optuna.create_study(direction="minimize")
    study.add_trials(trials)
    require("sklearn", "sweep", "fANOVA importance in lstmlab sweep-report")
    ev = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=ev).items()}


def _with_cell(trial, cell, cells):
    params = dict(trial.params, cell=cell)
    dists = dict(trial.distributions, cell=optuna.distributions.CategoricalDistribution(cells))
    return optuna.trial.create_trial(params=params, distributions=dists, value=trial.value)


def check_baseline(studies: dict, baseline: str, study: str = "") -> None:
    """Raise ValueError naming --baseline unless it is one of the study's variants."""
    if baseline not in studies:
        where = f"study {study!r}" if study else "the study"
        raise ValueError(f"--baseline {baseline!r} is not a variant of {where}; allowed: {', '.join(studies)}")


def summarize(studies: dict[str, optuna.Study], baseline: str = "vanilla") -> dict:
    """Per variant: counts, values, median (of an even count: the mean of the middle two),
    mean, best, fANOVA importance; Welch's t-test of each variant against `baseline`."""
    check_baseline(studies, baseline)
    variants = {}
    for cell, study in studies.items():
        done = _complete(study)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        vals = sorted(t.value for t in done)
        n = len(vals)
        variants[cell] = {
            "complete": n,
            "failed": states.count("FAIL"),
            "running": states.count("RUNNING"),
            "values": vals,
            "median": statistics.median(vals) if n else None,
            "mean": sum(vals) / n if n else None,
            "best": vals[0] if n else None,
            "best_params": min(done, key=lambda t: t.value).params if n else None,
            "solved": sum(bool(t.user_attrs.get("solved")) for t in done),
            "importance": importances(done),
            "trials": [
                {"number": t.number, "value": t.value, "params": t.params, "pid": t.user_attrs.get("pid")} for t in done
            ],
        }
    tested = [c for c in variants if c != baseline and variants[c]["complete"] >= 2]
    if baseline in variants and variants[baseline]["complete"] >= 2:
        for c in tested:
            t, p = welch(variants[c]["values"], variants[baseline]["values"])
            variants[c]["welch_t"] = t if math.isfinite(t) else None
            variants[c]["p_value"] = p if math.isfinite(p) else None
            variants[c]["p_bonferroni"] = min(1.0, p * len(tested)) if math.isfinite(p) else None
    cells = tuple(studies)
    pooled = [_with_cell(t, c, cells) for c, s in studies.items() for t in _complete(s)]
    metric = next(iter(studies.values())).user_attrs.get("sweep", {}).get("metric")
    return {
        "metric": metric,
        "baseline": baseline,
        "variants": variants,
        "importance_pooled": importances(pooled) if len(cells) > 1 else None,
    }


def _png(fig, path):
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def figures(summary: dict, studies: dict[str, optuna.Study], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = summary["variants"]
    cells = [c for c in v if v[c]["complete"]]
    fig, ax = plt.subplots(figsize=(1.0 * len(cells) + 3, 4.5))
    ax.boxplot([v[c]["values"] for c in cells], tick_labels=cells)
    ax.set_ylabel(summary["metric"])
    ax.set_title("Test metric per variant (COMPLETE trials)")
    ax.grid(True, axis="y", alpha=0.3)
    _png(fig, out / "boxplot.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in cells:
        ts = _complete(studies[c])
        ax.scatter([t.params["lr"] for t in ts], [t.value for t in ts], label=c, s=18)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(summary["metric"])
    ax.set_title("Learning rate against the test metric")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, alpha=0.3)
    _png(fig, out / "lr_scatter.png")

    names = ["importance.png"]
    imp = summary["importance_pooled"] or next((v[c]["importance"] for c in cells if v[c]["importance"]), None)
    if imp:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.barh(list(imp)[::-1], list(imp.values())[::-1])
        ax.set_xlabel("fANOVA importance (share of variance explained)")
        ax.set_title("Hyperparameter importance" + (" (all variants pooled)" if summary["importance_pooled"] else ""))
        _png(fig, out / "importance.png")
    else:
        names = []
    return ["boxplot.png", "lr_scatter.png"] + names


def markdown(summary: dict, figs: list[str]) -> str:
    v, base = summary["variants"], summary["baseline"]
    fmt = lambda x: "—" if x is None else f"{x:.4g}"
    lines = [
        f"# Variant study: {summary['metric']} (lower is better)",
        "",
        f"| variant | complete | failed | solved | median | mean | best | Welch t vs {base} | p | p (Bonferroni) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in v.items():
        lines.append(
            f"| {c} | {r['complete']} | {r['failed']} | {r['solved']} | {fmt(r['median'])} | "
            f"{fmt(r['mean'])} | {fmt(r['best'])} | {fmt(r.get('welch_t'))} | {fmt(r.get('p_value'))} | "
            f"{fmt(r.get('p_bonferroni'))} |"
        )
    imp = summary["importance_pooled"]
    if imp:
        lines += [
            "",
            "fANOVA importance, all variants pooled (the variant is a factor): "
            + ", ".join(f"{k} {x:.2f}" for k, x in imp.items()),
        ]
    lines += [
        "",
        f"Welch's t-test compares each variant's metric with {base}'s without assuming equal "
        "variances; Bonferroni multiplies p by the number of variants tested. fANOVA splits the "
        "variance of the metric over the hyperparameters (Hutter et al. 2014) on a random forest "
        "fitted to the trials.",
        "",
    ]
    lines += [f"![{f}]({f})" for f in figs]
    return "\n".join(lines) + "\n"


def write_sweep_report(storage_url: str, study: str, out: str | Path, baseline: str = "vanilla") -> dict:
    out = Path(out)
    studies = load(storage_url, study)
    check_baseline(studies, baseline, study)
    summary = summarize(studies, baseline)
    figs = figures(summary, studies, out)
    write_json(out / "sweep.json", summary)
    write_text(out / "report.md", markdown(summary, figs))
    return summary
