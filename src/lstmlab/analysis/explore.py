"""`lstmlab explore`: one self-contained HTML page (no server, no network) with sliders for
the 1-D theory (w, the activation, h, the forget-gate input v, the lag, the threshold) and
the flow study's measured figures beside them, embedded as data URIs.

The page's script computes the per-step factors, their products over the lag and the
horizon exactly as lstmlab.theory does (the same formulas and the same Newton iteration).
It reads initial slider values from the URL query (?w=2&act=tanh&h=0.5&v=3&lag=100&thr=-6;
thr is log10 of the threshold), so a link can share a setting.
"""

from __future__ import annotations

import base64
import html
from importlib.resources import files
from pathlib import Path

from ..io import check_writable, write_text
from .report import TEXT

STUDY_FIGURES = ("gradient_by_lag.png", "theory.png", "cell_path.png", "lyapunov.png")


def figures_html(study: Path | None) -> str:
    """The flow study's figures found in `study`, each an <img> with a data URI."""
    found = [f for f in STUDY_FIGURES if study is not None and (study / f).is_file()]
    if not found:
        where = "" if study is None else f" (none found in {html.escape(str(study))})"
        return (
            f"<p class='note'>No measured figures{where}: run <code>lstmlab flow --out out/flow</code> "
            "(<code>make demo</code>) and then <code>lstmlab explore --study out/flow</code>.</p>"
        )
    parts = []
    for f in found:
        data = base64.b64encode((study / f).read_bytes()).decode()
        parts.append(f"<h3>{TEXT[f][0]}</h3><img alt='{html.escape(f)}' src='data:image/png;base64,{data}'>")
    return "".join(parts)


def page(study: Path | None = None) -> str:
    template = files("lstmlab.analysis").joinpath("explore.html").read_text()
    return template.replace("<!--FIGURES-->", figures_html(study))


def _run(args) -> int:
    out = check_writable(args.out, "--out")
    study = Path(args.study) if args.study else None
    if study is not None and not study.is_dir():
        raise ValueError(f"--study {args.study!r} is not a folder; allowed: the --out folder of `lstmlab flow`")
    path = write_text(out / "explore.html", page(study))
    print(f"wrote {path} (open it in a browser; it needs no server and no network)")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "explore", help="a self-contained HTML page: sliders for the 1-D theory beside the flow study's figures"
    )
    p.add_argument(
        "--study", default=None, help="the flow study's output folder whose figures to embed (e.g. out/flow)"
    )
    p.add_argument("--out", default="out/explore", help="output folder (explore.html)")
    p.set_defaults(func=_run)
