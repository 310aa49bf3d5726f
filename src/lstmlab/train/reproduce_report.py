"""The report of `lstmlab reproduce`: one line per (row, arm) over its seeds (the fraction
that met the paper's criterion within the budget; median, min and max count of those that
did; what the others ran), the paper's numbers beside it, the machine and backend each
count is from; as markdown and JSON, and one figure per row. Every file is written whole
or not at all (lstmlab.io).

A trial's result (see lstmlab.train.reproduce) carries at least: solved, sequences (to
success when solved, else those run), seen, test_errors, test_size, wall_seconds, backend,
machine (lstmlab.train.trials.machine()).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict
from pathlib import Path

from ..io import atomic_write, write_json, write_text
from .trials import budget_key


def machine_label(result: dict) -> str:
    """Backend, CPU model, torch version and threads of one result, in words."""
    m = result.get("machine", {})
    threads = m.get("threads")
    return (
        f"{result.get('backend', 'unknown')} backend, {m.get('cpu', 'unknown CPU')}, torch {m.get('torch', '?')}, "
        f"{threads} thread{'' if threads == 1 else 's'}"
    )


def spread(values: list) -> dict | None:
    """median, min and max of a list of numbers (None for an empty list)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(exp, keys, done: dict, limits: dict) -> list[dict]:
    """One line per (row, arm) of `keys`, in the experiment's order, from the results
    `done` ({(row, arm, seed): result}); limits: max_sequences by budget_key(row, arm)."""
    machines = machine_ids(done)
    lines = []
    for row in exp.rows:
        for arm in exp.arms:
            planned = [k for k in keys if k[:2] == (row, arm)]
            if not planned:
                continue
            runs = [done[k] for k in planned if k in done]
            solved = [r for r in runs if r["solved"]]
            unsolved = [r for r in runs if not r["solved"]]
            ran = [_ran(r) for r in unsolved]
            tested = [r["test_errors"] for r in runs if r.get("test_errors") is not None]
            paper = exp.published.get((row, arm))
            lines.append(
                {
                    "row": row,
                    "setting": exp.settings.get(row, "-"),
                    "arm": arm,
                    "planned": len(planned),
                    "trials": len(runs),
                    "solved": len(solved),
                    "fraction": len(solved) / len(runs) if runs else None,
                    "sequences": spread([r["sequences"] for r in solved]),
                    "unsolved_sequences": sorted(n for n in ran if n is not None),
                    "diverged": ran.count(None),
                    "budget": limits.get(budget_key(row, arm)),
                    "unreachable": sum(1 for r in unsolved if r.get("criterion_reachable") is False),
                    "test_errors": spread(tested),
                    "test_size": next((r["test_size"] for r in runs if r.get("test_size")), None),
                    "paper": None if paper is None else asdict(paper),
                    "machines": sorted({machines[machine_label(r)] for r in runs}),
                    "wall_seconds": round(sum(r.get("wall_seconds") or 0 for r in runs), 1),
                }
            )
    return lines


def _ran(result: dict) -> int | None:
    """What an unsolved trial ran (None: nothing to count, e.g. its training diverged)."""
    return result.get("seen") if result.get("seen") is not None else result.get("sequences")


def machine_ids(done: dict) -> dict[str, str]:
    """Each machine label -> m1, m2, ... in order of first appearance (by key)."""
    ids = {}
    for key in sorted(done):
        ids.setdefault(machine_label(done[key]), f"m{len(ids) + 1}")
    return ids


def _n(x) -> str:
    """A count: thousands separated, a half (a median of two) kept."""
    if x is None:
        return "-"
    return f"{x:,.1f}" if x != int(x) else f"{int(x):,}"


def _fraction(f) -> str:
    return "-" if f is None else f"{100 * f:.0f}%"


def table_line(line: dict) -> str:
    s = line["sequences"]
    ours = "-" if s is None else f"{_n(s['median'])} ({_n(s['min'])}-{_n(s['max'])})"
    left = line["unsolved_sequences"]
    parts = []
    if left:
        parts.append(f"{len(left)} at {_n(left[0])}" + ("" if left[0] == left[-1] else f"-{_n(left[-1])}"))
    if line["diverged"]:
        parts.append(f"{line['diverged']} diverged")
    if line["unreachable"]:
        parts.append(f"{line['unreachable']} with a budget below the criterion's check")
    unsolved = "; ".join(parts) or "-"
    t = line["test_errors"]
    tests = "-" if t is None else f"{_n(t['median'])} ({_n(t['min'])}-{_n(t['max'])}) / {_n(line['test_size'])}"
    p = line["paper"] or {}
    paper_tests = "-" if p.get("test_errors") is None else f"{p['test_errors']}/{p['test_size']}"
    paper_fraction = _fraction(p.get("fraction")) + (f" ({p['trials']} trials)" if p.get("trials") else "")
    trials = f"{line['trials']}" + ("" if line["trials"] == line["planned"] else f" of {line['planned']}")
    met = f"{line['solved']}/{line['trials']} ({_fraction(line['fraction'])})" if line["trials"] else "-"
    return (
        f"| {line['row']} | {line['setting']} | {line['arm']} | {_n(line['budget'])} | {trials} | {met} | {ours} "
        f"| {unsolved} "
        f"| {paper_fraction} | {_n(p.get('sequences'))} | {tests} | {paper_tests} "
        f"| {', '.join(line['machines']) or '-'} |"
    )


def markdown(exp, table: list[dict], done: dict, meta: dict) -> str:
    """The report as markdown: how it was run, the table, the machines, how to read it."""
    word = exp.success
    budget = meta["budget"]
    limit = f"{budget:,} {word} a trial" if isinstance(budget, int) else f"each row's and arm's {budget} budget"
    if meta.get("max_seconds"):
        limit += f", at most {meta['max_seconds']:g} s a trial"
    lines = [f"## {meta['title']}, reproduced", ""]
    if meta.get("command"):
        lines += ["```sh", meta["command"], "```", ""]
    trials_time = sum(r.get("wall_seconds") or 0 for r in done.values())
    trials_cpu = sum(r.get("cpu_seconds") or 0 for r in done.values())
    lines += [
        f"Seeds 0-{meta['seeds'] - 1} for every row and arm; budget: {limit}. Wall time of the last "
        f"command: {meta['wall_seconds']:,.0f} s; the trials' own time, all commands, all workers: "
        f"{trials_time:,.0f} s ({trials_cpu:,.0f} CPU s: on a machine shared with other work, the CPU time is "
        f"what the trials would take alone). Trials stored in {meta['storage']} (study {meta['study']!r}).",
        "",
        f"| row | setting | arm | budget | trials | met the criterion | {word} to success: median (min-max) "
        f"| unsolved: {word} run | paper: fraction of its trials | paper: {word} | test errors: median (min-max) "
        "| paper: test errors | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [table_line(line) for line in table]
    ids = machine_ids(done)
    count = {i: 0 for i in ids.values()}
    for r in done.values():
        count[ids[machine_label(r)]] += 1
    lines += ["", "Machines (backend, CPU, torch, threads a trial):", ""]
    lines += [f"- {i}: {label} ({count[i]} trials)" for label, i in ids.items()]
    lines += [
        "",
        f"Success is the paper's criterion: {meta['criterion']}. The median, min and max are over the "
        f"trials that met it within the budget (the table's budget column, {word} a trial); unsolved trials "
        f"are listed with the {word} they ran. Test errors: wrong test sequences after training, every "
        "trial, solved or not.",
        "",
        "Counts depend on the machine and the backend: the same seed takes a different number of "
        f"{word} on another CPU or backend (floating-point sums in another order grow apart over "
        "thousands of updates), so the spread over seeds is the result, not one seed's count.",
    ]
    missing = [line for line in table if line["trials"] < line["planned"]]
    if missing:
        lines += [
            "",
            "**Incomplete**: "
            + ", ".join(f"{m['row']} {m['arm']} {m['trials']} of {m['planned']}" for m in missing)
            + " trials have a result; run the same command again to run the rest.",
        ]
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def figure(exp, row: str, table: list[dict], done: dict, path: Path) -> Path:
    """Count to success of every trial of one row, one column per arm: solved trials as
    dots (their median a bar), unsolved ones as crosses at the count they ran (the budget,
    dotted, unless a time limit stopped them sooner), the paper's count a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    lines = [line for line in table if line["row"] == row]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(lines), 4.0))
    top = 1
    for i, line in enumerate(lines):
        runs = [r for k, r in sorted(done.items()) if k[:2] == (row, line["arm"])]
        spread_x = lambda n, i=i: [i + 0.25 * ((j + 0.5) / n - 0.5) for j in range(n)]
        ok = [r["sequences"] for r in runs if r["solved"]]
        no = [_ran(r) for r in runs if not r["solved"] and _ran(r) is not None]
        first = i == 0
        ax.scatter(spread_x(len(ok)), ok, color="tab:blue", s=22, label="met the criterion" if first else None)
        ax.scatter(spread_x(len(no)), no, color="tab:red", marker="x", s=30, label="not met: ran" if first else None)
        if ok:
            ax.hlines(statistics.median(ok), i - 0.2, i + 0.2, color="black", lw=2)
        top = max([top, *ok, *no])
    published = {(line["paper"] or {}).get("sequences") for line in lines} - {None}
    for n in sorted(published):
        ax.axhline(n, color="gray", ls="--", lw=1)
        ax.annotate(f"paper: {n:,}", (len(lines) - 0.5, n), ha="right", va="bottom", fontsize=8, color="gray")
        top = max(top, n)
    for i, line in enumerate(lines):
        if line["budget"]:
            ax.hlines(
                line["budget"], i - 0.4, i + 0.4, color="tab:red", ls=":", lw=1, label="budget" if i == 0 else None
            )
            top = max(top, line["budget"])
    ax.set_xticks(range(len(lines)), [f"{line['arm']}\n{line['solved']}/{line['trials']}" for line in lines])
    ax.set_xlim(-0.5, len(lines) - 0.5)
    ax.set_ylim(0, top * 1.08)
    ax.set_ylabel(f"{exp.success} to success")
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.set_title(f"{row} ({lines[0]['setting']})" if lines and lines[0]["setting"] != "-" else row, fontsize=10)
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


def write_report(exp, table: list[dict], done: dict, meta: dict, out: Path) -> list[Path]:
    """reproduce-PAPER.md, reproduce-PAPER.json and reproduce-PAPER-ROW.png per row in `out`."""
    out = Path(out)
    stem = f"reproduce-{meta['paper']}"
    machines = {i: label for label, i in machine_ids(done).items()}
    trials = [{"row": k[0], "arm": k[1], "seed": k[2], **r} for k, r in sorted(done.items())]
    files = [
        write_text(out / f"{stem}.md", markdown(exp, table, done, meta)),
        write_json(out / f"{stem}.json", {"meta": meta, "machines": machines, "table": table, "trials": trials}),
    ]
    for row in dict.fromkeys(line["row"] for line in table):
        files.append(figure(exp, row, table, done, out / f"{stem}-{_safe(row)}.png"))
    return files


__all__ = ["machine_label", "markdown", "spread", "summarise", "write_report"]
