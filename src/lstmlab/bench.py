"""`lstmlab bench`: the fused cpu backend against torch.nn.LSTM and the reference loop.

For every cell and every grid shape (B, T, I, H), in one process: the time of a forward
pass (under no_grad) and of a forward + backward pass (sum of the output as the loss) of
one layer with backend="cpu", of torch.nn.LSTM at the same shape, and of the reference
backend's loop; the peak memory of the training step; and the rate the per-step
recurrent products reach, as a fraction of this machine's matrix-multiply peak.

Times are the best of several rounds; within a round every model runs once, back to back,
so the ratios compare runs made under the same conditions. Peak memory is the rise of the
process's resident-set high-water mark (/proc/self/status VmHWM, reset through
/proc/self/clear_refs) over one training step (the smaller of two), measured after all
timings with glibc set to return freed memory at once; parameters and their gradients
exist beforehand.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from .backends import cpu
from .cells import cell_names, get_cell
from .io import check_writable, write_json, write_text
from .layer import Recurrent

GRID = ((1, 1000, 1, 32), (16, 500, 8, 64), (32, 200, 32, 128), (64, 100, 64, 256), (8, 100, 128, 512))


def kernel_cells() -> tuple[str, ...]:
    """The registered cells the cpu backend computes (`cpu.supports`), in cell_names() order."""
    return tuple(n for n in cell_names() if cpu.supports(get_cell(n))[0])


@dataclass(frozen=True)
class BenchConfig:
    """cells: registry names (default: all the cpu backend computes, `kernel_cells`).
    shapes: (B, T, I, H) each. rounds: timing rounds (best of); reference_rounds: the same
    for the slow reference loop (0 skips it). memory: measure peak memory. seed: for inputs
    and weights. variants: each a tuple of (name, value) overrides of the cpu backend's
    tuning constants (`cpu.tuning`): every cell runs once more under each, with the same
    weights, in the same rounds, as "cell [name=value,...]"."""

    cells: tuple[str, ...] = field(default_factory=kernel_cells)
    shapes: tuple[tuple[int, int, int, int], ...] = GRID
    rounds: int = 9
    reference_rounds: int = 2
    memory: bool = True
    seed: int = 0
    variants: tuple[tuple[tuple[str, int], ...], ...] = ()


# ---- measuring -------------------------------------------------------------------------
def _forward(model, x):
    def run():
        with torch.no_grad():
            model(x)

    return run


def _train_step(model, x):
    def run():
        out = model(x)[0]
        out.sum().backward()

    return run


def _best(fn, rounds: int) -> float:
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(seconds: float = 1.0) -> float:
    """This machine's float32 matrix-multiply rate (flop/s) with torch's threads: the best
    of repeated 2048 x 2048 products."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best, start = math.inf, time.perf_counter()
    while time.perf_counter() - start < seconds:
        best = min(best, _best(lambda: torch.mm(a, b, out=c), 1))
    return 2 * n**3 / best


class PeakMemory:
    """Rise of the resident-set high-water mark over a call (Linux; else unavailable)."""

    def __init__(self):
        self.ok = os.path.exists("/proc/self/clear_refs")
        self.libc = None
        if self.ok:
            try:  # return freed memory to the system at once, so the mark tracks live memory
                self.libc = ctypes.CDLL("libc.so.6")
                self.libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
                self.libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except (OSError, AttributeError):
                self.ok = False

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def __call__(self, fn) -> float | None:
        if not self.ok:
            return None
        gc.collect()
        self.libc.malloc_trim(0)  # free heap pages back to the system: reuse would hide them
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = self._status("VmRSS:")
        fn()
        return self._status("VmHWM:") - base


def _variant_name(cell: str, variant) -> str:
    return f"{cell} [{','.join(f'{k}={v}' for k, v in variant)}]"


def _models(shape, cfg: BenchConfig):
    """The input, the models by name and each model's tuning overrides."""
    B, T, I, H = shape
    torch.manual_seed(cfg.seed)
    x = torch.randn(T, B, I, requires_grad=True)
    models = {"torch.nn.LSTM": torch.nn.LSTM(I, H)}
    knobs = {"torch.nn.LSTM": {}}
    for cell in cfg.cells:
        models[cell], knobs[cell] = Recurrent(I, H, cell=cell, backend="cpu"), {}
    for variant in cfg.variants:
        for cell in cfg.cells:
            name = _variant_name(cell, variant)
            models[name] = Recurrent(I, H, cell=cell, backend="cpu")
            models[name].load_state_dict(models[cell].state_dict())
            knobs[name] = dict(variant)
    return x, models, knobs


def _tuned(fn, knobs):
    if not knobs:
        return fn

    def run():
        with cpu.tuning(**knobs):
            fn()

    return run


def _product_rate(model, x) -> float | None:
    """flop/s of the recurrent products during one training step (the kernel's clock)."""
    ext = cpu._extension()
    ext.set_clock(True)
    try:
        _train_step(model, x)()
        clock = ext.read_clock()
    finally:
        ext.set_clock(False)
    seconds = clock["forward product"] + clock["backward product"]
    flops = clock["forward product flops"] + clock["backward product flops"]
    return flops / seconds if seconds > 0 else None


def bench_shape(shape, cfg: BenchConfig, log=print) -> dict:
    """Times, ratios and product rates for one shape (memory: see bench_memory)."""
    B, T, I, H = shape
    x, models, knobs = _models(shape, cfg)
    forward = {k: _tuned(_forward(m, x), knobs[k]) for k, m in models.items()}
    step = {k: _tuned(_train_step(m, x), knobs[k]) for k, m in models.items()}
    for k in models:  # warm up (and allocate the parameters' gradients)
        step[k]()
        forward[k]()
    fwd = {k: math.inf for k in models}
    train = {k: math.inf for k in models}
    for _ in range(cfg.rounds):
        for k in models:
            fwd[k] = min(fwd[k], _best(forward[k], 1))
        for k in models:
            train[k] = min(train[k], _best(step[k], 1))
    rows = []
    for k, m in models.items():
        row = {
            "model": k,
            "fwd_s": fwd[k],
            "train_s": train[k],
            "fwd_ratio": fwd[k] / fwd["torch.nn.LSTM"],
            "train_ratio": train[k] / train["torch.nn.LSTM"],
        }
        if k != "torch.nn.LSTM":
            with cpu.tuning(**knobs[k]):
                row["product_flops"] = _product_rate(m, x)
            if cfg.reference_rounds and k in cfg.cells:
                ref = Recurrent(I, H, cell=k, backend="reference")
                ref.load_state_dict(m.state_dict())
                _train_step(ref, x)()
                row["ref_fwd_s"] = _best(_forward(ref, x), cfg.reference_rounds)
                row["ref_train_s"] = _best(_train_step(ref, x), cfg.reference_rounds)
                row["vs_reference"] = row["ref_train_s"] / row["train_s"]
        rows.append(row)
        log(
            f"  {k:14s} fwd {1e3 * fwd[k]:8.2f} ms ({row['fwd_ratio']:.2f}x)  fwd+bwd {1e3 * train[k]:8.2f} ms "
            f"({row['train_ratio']:.2f}x)"
            + (f"  reference {row['vs_reference']:.0f}x slower" if "vs_reference" in row else "")
        )
    return {"shape": list(shape), "rows": rows}


def bench_memory(shape, cfg: BenchConfig, meter: PeakMemory) -> dict[str, float | None]:
    """Peak memory of one training step per model: the smaller of two measurements (the
    first use of a code path can allocate once-only buffers, in MKL for instance)."""
    x, models, knobs = _models(shape, cfg)
    out = {}
    for k, m in models.items():
        step = _tuned(_train_step(m, x), knobs[k])
        step()  # gradients exist before the measured step
        m.zero_grad(set_to_none=False)
        x.grad = torch.zeros_like(x)
        peaks = [meter(step) for _ in range(2)]
        out[k] = None if None in peaks else min(peaks)
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's first "model name"; else what platform knows)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model


def machine_label() -> str:
    """The machine in one line, as a trial's result records it: "<cpu model> (<n> cores)"."""
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_backend": cpu.available()[1],
    }


def run(cfg: BenchConfig, log=print) -> dict:
    ok, why = cpu.available()
    if not ok:
        raise RuntimeError(f"lstmlab bench needs the cpu backend, which is unavailable: {why}")
    info = machine()
    info["matmul_peak_flops"] = matmul_peak()
    log(f"{info['cpu']}, {info['torch_threads']} threads, matmul peak {info['matmul_peak_flops'] / 1e9:.0f} GFLOP/s")
    shapes = []
    for shape in cfg.shapes:
        log(f"B, T, I, H = {shape}")
        shapes.append(bench_shape(shape, cfg, log))
    if cfg.memory:
        meter = PeakMemory()
        for res in shapes:
            peaks = bench_memory(tuple(res["shape"]), cfg, meter)
            for row in res["rows"]:
                row["peak_bytes"] = peaks[row["model"]]
    return {
        "config": {**asdict(BenchConfig()), **asdict(cfg)},
        "machine": info,
        "shapes": shapes,
        "summary": summarise(shapes),
    }


def _geomean(xs):
    xs = [x for x in xs if x is not None]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarise(shapes) -> dict:
    cells = [r["model"] for r in shapes[0]["rows"] if r["model"] != "torch.nn.LSTM"]
    per_cell = {}
    for c in cells:
        rows = [next(r for r in s["rows"] if r["model"] == c) for s in shapes]
        per_cell[c] = {
            "train_geomean": _geomean([r["train_ratio"] for r in rows]),
            "train_worst": max(r["train_ratio"] for r in rows),
            "fwd_worst": max(r["fwd_ratio"] for r in rows),
        }
    allrows = [r for s in shapes for r in s["rows"] if r["model"] != "torch.nn.LSTM"]
    return {
        "per_cell": per_cell,
        "train_geomean": _geomean([r["train_ratio"] for r in allrows]),
        "fwd_geomean": _geomean([r["fwd_ratio"] for r in allrows]),
    }


# ---- reporting -------------------------------------------------------------------------
def markdown(result: dict, command: str) -> str:
    m = result["machine"]
    peak = m["matmul_peak_flops"]
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads, "
        f"Python {m['python']}; cpu backend: {m['cpu_backend']}. Matrix-multiply peak "
        f"(2048^3 float32, torch.mm): {peak / 1e9:.0f} GFLOP/s.",
        "",
        "Ratios are time / torch.nn.LSTM's time at the same shape, measured in this one run "
        "(best of the rounds). fwd: forward under no_grad; fwd+bwd: forward and backward of "
        "out.sum(). vs ref: how many times faster than the reference backend's loop (fwd+bwd). "
        "Peak: rise of resident memory over one training step. Products: rate of the per-step "
        "recurrent products (forward and backward) as a share of the matmul peak.",
        "",
    ]
    for res in result["shapes"]:
        B, T, I, H = res["shape"]
        lines += [
            f"### B={B}, T={T}, I={I}, H={H}",
            "",
            "| model | fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd ratio | vs ref | peak MiB | products |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["rows"]:
            peak_b = r.get("peak_bytes")
            lines.append(
                "| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {} | {} | {} |".format(
                    r["model"],
                    1e3 * r["fwd_s"],
                    r["fwd_ratio"],
                    1e3 * r["train_s"],
                    r["train_ratio"],
                    f"{r['vs_reference']:.0f}x" if "vs_reference" in r else "",
                    f"{peak_b / 2**20:.2f}" if peak_b is not None else "n/a",
                    f"{100 * r['product_flops'] / peak:.0f}%" if r.get("product_flops") else "",
                )
            )
        lines.append("")
    s = result["summary"]
    lines += [
        "### Summary (fwd+bwd ratio against torch.nn.LSTM)",
        "",
        f"Geometric mean over all cells and shapes: {s['train_geomean']:.2f} (forward: {s['fwd_geomean']:.2f}).",
        "",
        "| cell | geomean | worst shape | worst fwd |",
        "|---|---:|---:|---:|",
    ]
    for c, v in s["per_cell"].items():
        lines.append(f"| {c} | {v['train_geomean']:.2f} | {v['train_worst']:.2f} | {v['fwd_worst']:.2f} |")
    return "\n".join(lines) + "\n"


def _shape(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--shape {text!r} is invalid; allowed: B,T,I,H (four positive integers)")
    return tuple(int(p) for p in parts)


def _variant(text: str) -> tuple[tuple[str, int], ...]:
    """--variant NAME=VALUE[,NAME=VALUE...]: overrides of cpu.TUNING constants."""
    pairs = []
    for item in text.split(","):
        name, eq, value = item.partition("=")
        if not eq or not value.strip().isdigit():
            raise ValueError(
                f"--variant {text!r} is invalid; allowed: NAME=VALUE[,NAME=VALUE...] with VALUE a whole "
                f"number and NAME one of {', '.join(cpu.TUNING)}"
            )
        pairs.append((name.strip(), int(value)))
    try:
        with cpu.tuning(**dict(pairs)):  # checks the names and values
            pass
    except ValueError as e:
        raise ValueError(f"--variant {text!r}: {e}") from None
    return tuple(pairs)


def _main(args) -> int:
    if args.out:
        check_writable(args.out, "--out", folder=False)
    if args.json:
        check_writable(args.json, "--json", folder=False)
    if args.rounds < 1 or args.reference_rounds < 0:
        raise ValueError(
            f"--rounds {args.rounds} / --reference-rounds {args.reference_rounds} is invalid; "
            f"allowed: rounds >= 1, reference rounds >= 0"
        )
    unknown = [c for c in args.cells or () if c not in kernel_cells()]
    if unknown:
        raise ValueError(
            f"--cells {', '.join(unknown)}: not a registered cell the cpu backend computes; "
            f"valid: {', '.join(kernel_cells())}"
        )
    cfg = BenchConfig(
        cells=tuple(args.cells or kernel_cells()),
        shapes=tuple(_shape(s) for s in args.shape) if args.shape else GRID,
        rounds=args.rounds,
        reference_rounds=args.reference_rounds,
        memory=not args.no_memory,
        variants=tuple(_variant(v) for v in args.variant or ()),
    )
    result = run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    command = "lstmlab bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "lstmlab bench"
    text = markdown(result, command.strip())
    print(text)
    if args.out:
        write_text(args.out, text)
    if args.json:
        write_json(args.json, result)
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="the cpu backend against torch.nn.LSTM and the reference loop")
    p.add_argument("--cells", nargs="+", help="cells to run (default: all registered)")
    p.add_argument("--shape", action="append", help="B,T,I,H (repeatable; default: the issue's grid of five)")
    p.add_argument("--rounds", type=int, default=BenchConfig.rounds, help="timing rounds, best of")
    p.add_argument(
        "--reference-rounds",
        type=int,
        default=BenchConfig.reference_rounds,
        help="rounds for the reference loop (0: skip it)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument(
        "--variant",
        action="append",
        metavar="NAME=VALUE[,...]",
        help="also run every cell with these cpu backend tuning constants (lstmlab.backends.cpu.TUNING), "
        "in the same rounds (repeatable)",
    )
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--json", help="write all numbers as JSON here")
    p.set_defaults(func=_main)
