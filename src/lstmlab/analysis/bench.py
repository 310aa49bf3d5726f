"""`lstmlab bench-flow`: the instruments' cost against the naive routes, in one process.

- step Jacobians: closed form (all steps at once) vs autograd's Jacobian of the reference
  step, one step at a time (torch.autograd.functional.jacobian, both its plain and its
  vectorised mode);
- Lyapunov spectrum: closed-form Jacobians + QR vs per-step autograd Jacobians + the same QR;
- gradient_flow (forward + backward recording every step's gradient norm) vs a plain
  forward + backward of the same loss on the same (reference) backend;
- `train --flow-every` (`--watch`): a short training run with and without the probes.
"""

from __future__ import annotations

import time

import torch

from ..backends import reference
from ..layer import Recurrent
from .flow import gradient_flow
from .jacobians import jacobians_from_run, record
from .lyapunov import lyapunov_from_jacobians


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def autograd_jacobians(model, x, vectorize: bool) -> torch.Tensor:
    """The naive route: d s_t / d s_{t-1} by autograd, one step (and sequence) at a time."""
    run = record(model, x)
    spec, p = model.spec, model.cell_params(0)
    sizes = [s.shape[-1] for s in run.prev]
    T, B = x.shape[:2]
    out = torch.empty(T, B, sum(sizes), sum(sizes), dtype=x.dtype)
    for t in range(T):
        for b in range(B):

            def f(flat, t=t, b=b):
                st = tuple(v.unsqueeze(0) for v in flat.split(sizes))
                return torch.cat([n[0] for n in reference.step(spec, p, x[t, b : b + 1], st, model.truncate)])

            prev = torch.cat([s[t, b] for s in run.prev])
            out[t, b] = torch.autograd.functional.jacobian(f, prev, vectorize=vectorize)
    return out


def bench_jacobians(cell, T, H, B=1, repeat=3, naive_steps=None, k=16):
    torch.manual_seed(0)
    model = Recurrent(1, H, cell=cell, dtype=torch.float64)
    x = torch.randn(T, B, 1, dtype=torch.float64)
    for p in model.parameters():
        p.requires_grad_(False)
    t_closed, J = _best(lambda: jacobians_from_run(record(model, x)), repeat)
    n = T if naive_steps is None else naive_steps  # the naive route is linear in T
    rows = {"cell": cell, "T": T, "H": H, "B": B, "k": k, "closed_form_s": t_closed}
    for vec in (True, False):
        t_naive, Jn = _best(lambda vec=vec: autograd_jacobians(model, x[:n], vec), 1)
        assert torch.allclose(Jn, J[:n], atol=1e-10), "closed form and autograd disagree"
        rows[f"autograd{'_vectorized' if vec else ''}_s"] = t_naive * T / n
    for name, kk in (("top", k), ("full", None)):
        t_qr, _ = _best(lambda kk=kk: lyapunov_from_jacobians(J, kk), 1)
        rows[f"qr_{name}_s"] = t_qr
        rows[f"lyapunov_{name}_closed_s"] = t_closed + t_qr
        rows[f"lyapunov_{name}_naive_s"] = rows["autograd_s"] + t_qr
        rows[f"speedup_lyapunov_{name}"] = rows[f"lyapunov_{name}_naive_s"] / rows[f"lyapunov_{name}_closed_s"]
    rows["speedup_jacobians"] = rows["autograd_s"] / t_closed
    rows["speedup_jacobians_vectorized"] = rows["autograd_vectorized_s"] / t_closed
    for p in model.parameters():
        p.requires_grad_(True)
    return rows


def bench_gradient_flow(cell, T, H, B, repeat=5):
    torch.manual_seed(0)
    model = Recurrent(1, H, cell=cell, backend="reference")
    x = torch.randn(T, B, 1)

    def plain():
        model.zero_grad()
        model(x)[0][-1].sum().backward()

    def flow():
        model.zero_grad()
        gradient_flow(model, x, lambda out: out[-1].sum())

    plain(), flow()  # warm up
    t_plain, _ = _best(plain, repeat)
    t_flow, _ = _best(flow, repeat)
    return {
        "cell": cell,
        "T": T,
        "H": H,
        "B": B,
        "plain_backward_s": t_plain,
        "gradient_flow_s": t_flow,
        "ratio": t_flow / t_plain,
    }


def bench_watch(hidden: int, sequences: int, every: int, repeat: int = 3) -> dict:
    """The cost of train --flow-every on a short adding (T = 100) run: the time spent in
    the probes (measuring and writing flow.json) against the rest of the same run, which is
    immune to the machine's load changing between runs; and, beside it, the wall time of
    runs without and with the probes (interleaved, best of `repeat` each)."""
    import tempfile

    from ..train import TrainConfig, Trainer

    def once(flow_every):
        with tempfile.TemporaryDirectory() as d:
            config = TrainConfig(
                "adding",
                {"T": 100},
                cell="lstm",
                hidden_size=hidden,
                optimizer="adam",
                lr=0.01,
                batch_size=4,
                max_sequences=sequences,
                eval_every=sequences,
                checkpoint_every=None,
                test=False,
                progress=False,
                flow_every=flow_every,
                out_dir=d,
            )
            trainer = Trainer(config)
            spent, measure = [0.0], trainer.measure_flow

            def timed():
                t = time.perf_counter()
                measure()
                spent[0] += time.perf_counter() - t

            trainer.measure_flow = timed
            t0 = time.perf_counter()
            trainer.run()
            return time.perf_counter() - t0, spent[0], len(trainer.flow_records)

    plain, flow = [], []
    for _ in range(repeat):
        plain.append(once(None))
        flow.append(once(every))
    t_plain = min(r[0] for r in plain)
    t_flow, in_probes, probes = min(flow, key=lambda r: r[1] / (r[0] - r[1]))
    return {
        "hidden": hidden,
        "sequences": sequences,
        "flow_every": every,
        "probes": probes,
        "probe_s": in_probes / probes,
        "rest_s": t_flow - in_probes,
        "overhead": in_probes / (t_flow - in_probes),
        "plain_s": t_plain,
        "flow_s": min(r[0] for r in flow),
    }


def _watch(args) -> int:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(
        f"train --flow-every on adding T=100 (lstm, Adam, batch 4, {args.watch_sequences:,} sequences): time in "
        f"the probes against the rest of the same run; beside it, whole runs without and with (best of 3)."
    )
    print("| H | flow_every | probes | s per probe | rest of the run (s) | overhead | runs without / with (s) |")
    print("|---|---|---|---|---|---|---|")
    for hidden in (8, 64):
        for every in (2000, 500):
            r = bench_watch(hidden, args.watch_sequences, every)
            print(
                f"| {hidden} | {every:,} | {r['probes']} | {r['probe_s']:.3f} | {r['rest_s']:.2f} | "
                f"{100 * r['overhead']:.1f}% | {r['plain_s']:.2f} / {r['flow_s']:.2f} |"
            )
    return 0


def _run(args) -> int:
    if args.watch:
        return _watch(args)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(
        f"Step Jacobians and Lyapunov exponents, T={args.steps}, H={args.hidden}, B=1, float64. Naive route: "
        f"torch.autograd.functional.jacobian of the reference step, per step (plain and vectorize=True), "
        f"timed on {args.naive_steps} steps and scaled to T; the Lyapunov routes add the same QR iteration."
    )
    print(
        "| cell | closed form (s) | autograd/step (s) | speedup | autograd/step, vectorized (s) | speedup | "
        f"Lyapunov top-{args.k}: closed / naive (s) | speedup | full spectrum: closed / naive (s) | speedup |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        r = bench_jacobians(cell, args.steps, args.hidden, naive_steps=args.naive_steps, k=args.k)
        print(
            f"| {cell} | {r['closed_form_s']:.3f} | {r['autograd_s']:.2f} | {r['speedup_jacobians']:.0f}x | "
            f"{r['autograd_vectorized_s']:.2f} | {r['speedup_jacobians_vectorized']:.1f}x | "
            f"{r['lyapunov_top_closed_s']:.2f} / {r['lyapunov_top_naive_s']:.2f} | "
            f"{r['speedup_lyapunov_top']:.0f}x | "
            f"{r['lyapunov_full_closed_s']:.2f} / {r['lyapunov_full_naive_s']:.2f} | "
            f"{r['speedup_lyapunov_full']:.1f}x |"
        )
    print("\ngradient_flow vs plain forward+backward (reference backend, float32, T=200, H=64, B=8):")
    print("| cell | plain (s) | gradient_flow (s) | ratio |")
    print("|---|---|---|---|")
    for cell in cells:
        r = bench_gradient_flow(cell, 200, 64, 8)
        print(f"| {cell} | {r['plain_backward_s']:.4f} | {r['gradient_flow_s']:.4f} | {r['ratio']:.2f}x |")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench-flow", help="benchmark the gradient-flow instruments against naive routes")
    p.add_argument("--cells", default="rnn-tanh,lstm,vanilla,gru")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--k", type=int, default=16, help="top-k Lyapunov exponents")
    p.add_argument(
        "--naive-steps", type=int, default=100, help="steps the naive routes are timed on (their cost is linear in T)"
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="instead: the cost of train --flow-every (a short run with and without the probes)",
    )
    p.add_argument("--watch-sequences", type=int, default=8000, help="sequences of each --watch run")
    p.set_defaults(func=_run)
