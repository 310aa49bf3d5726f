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

`--sections modern` (issue #13's cells) instead: slstm on its sequential route (the cpu
kernel where it computes it, else the reference) against torch.nn.LSTM on the grid;
minlstm and mingru on the parallel scan (backend "scan") and on their sequential route,
with the same weights, against torch.nn.GRU (and LSTM) at (B, I, H) = (16, 128, 128) for
T = 256, 1000, 4096, all of one T in the same rounds, and how each one's time grows with
T; and the peak memory of each model's training step measured the same way, but in a
fresh subprocess per model (no other model's buffers in the process).

`--sections gemm`: lstm, gru and slstm on the cpu backend with each engine of its matrix
products (the BLAS torch is linked with, and the kernel's own product; cpu.gemm_engine),
the same weights, against torch.nn.LSTM on the grid, all in the same rounds: what the
engine that LSTMLAB_GEMM=auto measures and picks is worth on this machine.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from .backends import cpu
from .cells import cell_names, get_cell
from .io import check_writable, write_json, write_text
from .layer import Recurrent

GRID = ((1, 1000, 1, 32), (16, 500, 8, 64), (32, 200, 32, 128), (64, 100, 64, 256), (8, 100, 128, 512))
SECTIONS = ("grid", "modern", "gemm")
GEMM_CELLS = ("lstm", "gru", "slstm")  # the "gemm" section's cells, on each product engine
MIN_SHAPE = (16, 128, 128)  # B, I, H of issue #13's minLSTM / minGRU comparison
MIN_STEPS = (256, 1000, 4096)
MIN_CELLS = ("minlstm", "mingru")


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
    weights, in the same rounds, as "cell [name=value,...]". sections: "grid" (the cells on
    `shapes` against torch.nn.LSTM) and/or "modern" (issue #13's cells: slstm on `shapes`
    against torch.nn.LSTM; minlstm and mingru, the parallel scan against their sequential
    route and torch.nn.GRU, at min_shape = (B, I, H) for each T in min_steps; with memory,
    the peak memory of each, in a subprocess per model)."""

    cells: tuple[str, ...] = field(default_factory=kernel_cells)
    shapes: tuple[tuple[int, int, int, int], ...] = GRID
    rounds: int = 9
    reference_rounds: int = 2
    memory: bool = True
    seed: int = 0
    variants: tuple[tuple[tuple[str, int], ...], ...] = ()
    sections: tuple[str, ...] = ("grid",)
    min_shape: tuple[int, int, int] = MIN_SHAPE
    min_steps: tuple[int, ...] = MIN_STEPS


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


def _time_models(models: dict, x, rounds: int, knobs=None) -> tuple[dict, dict]:
    """Best forward (no_grad) and forward + backward times of each model on x: after one
    warm-up of each (which also allocates the parameters' gradients), `rounds` rounds in
    which every model runs once, back to back, so that the ratios between them compare runs
    made under the same conditions."""
    knobs = knobs or {}
    forward = {k: _tuned(_forward(m, x), knobs.get(k)) for k, m in models.items()}
    step = {k: _tuned(_train_step(m, x), knobs.get(k)) for k, m in models.items()}
    for k in models:
        step[k]()
        forward[k]()
    fwd = {k: math.inf for k in models}
    train = {k: math.inf for k in models}
    for _ in range(rounds):
        for k in models:
            fwd[k] = min(fwd[k], _best(forward[k], 1))
        for k in models:
            train[k] = min(train[k], _best(step[k], 1))
    return fwd, train


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
    """fn under the cpu backend's tuning `knobs` (cpu.tuning's names), and under the product
    engine knobs["engine"] ("blas" or "builtin", cpu.using_gemm) if given."""
    if not knobs:
        return fn
    knobs = dict(knobs)
    engine = knobs.pop("engine", None)

    def run():
        with cpu.tuning(**knobs), cpu.using_gemm(engine):
            fn()

    return run


def _clocked_step(model, x) -> dict:
    """The kernel's clock (seconds per phase, products' flops) over one training step."""
    ext = cpu._extension()
    ext.set_clock(True)
    try:
        _train_step(model, x)()
        return ext.read_clock()
    finally:
        ext.set_clock(False)


def _product_rate(model, x) -> float | None:
    """flop/s of the recurrent products during one training step (the kernel's clock)."""
    clock = _clocked_step(model, x)
    seconds = clock["forward product"] + clock["backward product"]
    flops = clock["forward product flops"] + clock["backward product flops"]
    return flops / seconds if seconds > 0 else None


def _recurrence_share(model, x, steps: int = 5) -> dict | None:
    """Where one training step of a min cell on the fused sequential route spends its time
    (the kernel's clock, the busier worker's seconds, best of `steps`): the products over
    all steps (x W^T; dx = dP W, dW = dP^T x and the bias sums) against the recurrence
    itself (the per-step pointwise passes, forward and backward). Every route computes the
    same products, so a parallel-in-time route can at most remove the recurrence's share:
    `bound` = (products + recurrence) / products, the clocked kernel time over its
    products' (the step's Python and allocation time left out), is the speed-up no such
    route can pass."""
    best = None
    for _ in range(steps):
        clock = _clocked_step(model, x)
        products = clock["forward input"] + clock["backward chunk"]
        recurrence = clock["forward pointwise"] + clock["backward pointwise"]
        if best is None or products + recurrence < best["products_s"] + best["recurrence_s"]:
            best = {"products_s": products, "recurrence_s": recurrence}
    total = best["products_s"] + best["recurrence_s"]
    if total <= 0 or best["products_s"] <= 0:
        return None
    return {**best, "recurrence_share": best["recurrence_s"] / total, "bound": total / best["products_s"]}


def bench_shape(shape, cfg: BenchConfig, log=print) -> dict:
    """Times, ratios and product rates for one shape (memory: see bench_memory)."""
    B, T, I, H = shape
    x, models, knobs = _models(shape, cfg)
    fwd, train = _time_models(models, x, cfg.rounds, knobs)
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


# ---- the modern cells (issue #13) ------------------------------------------------------
def sequential_backend(cell: str) -> str:
    """The sequential route a cell runs on by default on CPU: the fused kernel where it is
    available and computes the cell, else the reference loop."""
    return "cpu" if cpu.available()[0] and cpu.supports(get_cell(cell))[0] else "reference"


def _modern_model(desc: dict, I: int, H: int):
    """A model from its description: {"torch": "LSTM" | "GRU"} or {"cell": name, "backend": name}."""
    if "torch" in desc:
        return getattr(torch.nn, desc["torch"])(I, H)
    return Recurrent(I, H, cell=desc["cell"], backend=desc["backend"])


def _min_models(cfg: BenchConfig) -> dict[str, dict]:
    """The models of the minlstm / mingru comparison by name, as descriptions."""
    out = {}
    for cell in MIN_CELLS:
        out[f"{cell} scan"] = {"cell": cell, "backend": "scan", "route": "scan"}
        seq = sequential_backend(cell)
        out[f"{cell} {seq}"] = {"cell": cell, "backend": seq, "route": "sequential"}
    out["torch.nn.GRU"] = {"torch": "GRU", "route": "torch"}
    out["torch.nn.LSTM"] = {"torch": "LSTM", "route": "torch"}
    return out


def bench_slstm(shape, cfg: BenchConfig, log=print) -> dict:
    """slstm (on its sequential route) against torch.nn.LSTM at one (B, T, I, H)."""
    B, T, I, H = shape
    torch.manual_seed(cfg.seed)
    x = torch.randn(T, B, I, requires_grad=True)
    backend = sequential_backend("slstm")
    models = {"torch.nn.LSTM": torch.nn.LSTM(I, H), "slstm": Recurrent(I, H, cell="slstm", backend=backend)}
    fwd, train = _time_models(models, x, cfg.rounds)
    row = {
        "shape": list(shape),
        "backend": backend,
        "fwd_s": fwd["slstm"],
        "train_s": train["slstm"],
        "lstm_fwd_s": fwd["torch.nn.LSTM"],
        "lstm_train_s": train["torch.nn.LSTM"],
        "fwd_ratio": fwd["slstm"] / fwd["torch.nn.LSTM"],
        "train_ratio": train["slstm"] / train["torch.nn.LSTM"],
    }
    log(f"  slstm ({backend}) at {shape}: fwd+bwd {row['train_ratio']:.2f}x torch.nn.LSTM, fwd {row['fwd_ratio']:.2f}x")
    return row


def bench_min(T: int, cfg: BenchConfig, log=print) -> dict:
    """minlstm and mingru, the scan and the sequential route with the same weights, and
    torch.nn.GRU / LSTM, at (B, I, H) = cfg.min_shape and T steps, timed in the same rounds."""
    B, I, H = cfg.min_shape
    torch.manual_seed(cfg.seed)
    x = torch.randn(T, B, I, requires_grad=True)
    descs = _min_models(cfg)
    models = {}
    for name, d in descs.items():
        models[name] = _modern_model(d, I, H)
        same = next((m for k, m in models.items() if k != name and descs[k].get("cell", 0) == d.get("cell")), None)
        if same is not None:  # the cell's two routes share their weights
            models[name].load_state_dict(same.state_dict())
    fwd, train = _time_models(models, x, cfg.rounds)
    rows = []
    for name, d in descs.items():
        row = {"model": name, "route": d["route"], "fwd_s": fwd[name], "train_s": train[name]}
        row["fwd_vs_gru"] = fwd[name] / fwd["torch.nn.GRU"]
        row["train_vs_gru"] = train[name] / train["torch.nn.GRU"]
        rows.append(row)
    speedup = {}
    for cell in MIN_CELLS:  # the sequential route's time over the scan's: > 1 when the scan is faster
        seq = f"{cell} {sequential_backend(cell)}"
        speedup[cell] = {
            "sequential": seq,
            "fwd": fwd[seq] / fwd[f"{cell} scan"],
            "train": train[seq] / train[f"{cell} scan"],
        }
        if speedup[cell]["sequential"].endswith(" cpu"):
            speedup[cell]["split"] = _recurrence_share(models[seq], x)
    log(
        f"  T={T}: scan speed-up over the sequential route (fwd+bwd) "
        + ", ".join(f"{c} {v['train']:.2f}x" for c, v in speedup.items())
    )
    return {"T": T, "shape": [B, T, I, H], "rows": rows, "scan_speedup": speedup}


def growth(mins: list[dict]) -> dict[str, dict]:
    """Per model, its fwd+bwd times by T and the exponent p of time ~ T^p from the first
    to the last T (1: linear in T)."""
    out = {}
    if not mins:
        return out
    for name in (r["model"] for r in mins[0]["rows"]):
        ts = [m["T"] for m in mins]
        times = [next(r["train_s"] for r in m["rows"] if r["model"] == name) for m in mins]
        p = math.log(times[-1] / times[0]) / math.log(ts[-1] / ts[0]) if ts[-1] != ts[0] else None
        out[name] = {"T": ts, "train_s": times, "exponent": p}
    return out


def _memory_child(desc_json: str) -> None:
    """Subprocess entry (see `memory_in_subprocess`): print, as JSON, the peak memory of one
    training step of the model `desc_json` describes, the smaller of two after a warm-up."""
    desc = json.loads(desc_json)
    B, T, I, H = desc["shape"]
    torch.manual_seed(0)
    meter = PeakMemory()
    model = _modern_model(desc, I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    step = _train_step(model, x)
    step()  # once-only buffers, and the gradients exist before the measured steps
    model.zero_grad(set_to_none=False)
    x.grad = torch.zeros_like(x)
    peaks = [meter(step) for _ in range(2)]
    print(json.dumps({"peak_bytes": None if None in peaks else min(peaks)}))


def memory_in_subprocess(desc: dict, shape) -> float | None:
    """Peak memory (bytes) of one training step of a model in a fresh Python process: the
    rise of its resident-set high-water mark (PeakMemory) over the step, so that no other
    model's allocations or cached buffers are in it. None where that cannot be measured."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    code = f"from lstmlab.bench import _memory_child; _memory_child({json.dumps({**desc, 'shape': list(shape)})!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"memory measurement of {desc} failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_bytes"]


def bench_modern_memory(T: int, cfg: BenchConfig, log=print) -> list[dict]:
    """Peak memory of one training step at (B, I, H) = cfg.min_shape and T, per model
    (the min cells on both routes, slstm, torch.nn.GRU and LSTM), and its ratio to torch.nn.LSTM's."""
    B, I, H = cfg.min_shape
    descs = {**_min_models(cfg), "slstm": {"cell": "slstm", "backend": sequential_backend("slstm")}}
    peaks = {name: memory_in_subprocess(d, (B, T, I, H)) for name, d in descs.items()}
    base = peaks["torch.nn.LSTM"]
    rows = []
    for name, peak in peaks.items():
        ratio = peak / base if peak is not None and base else None
        rows.append({"model": name, "T": T, "peak_bytes": peak, "vs_lstm": ratio})
    log(f"  T={T}: peak memory " + ", ".join(f"{r['model']} {r['vs_lstm']:.2f}x" for r in rows if r["vs_lstm"]))
    return rows


def bench_gemm(shape, cfg: BenchConfig, log=print) -> dict:
    """GEMM_CELLS on the cpu backend with each product engine (same weights) and
    torch.nn.LSTM at one (B, T, I, H), in the same rounds."""
    B, T, I, H = shape
    torch.manual_seed(cfg.seed)
    x = torch.randn(T, B, I, requires_grad=True)
    models, knobs = {"torch.nn.LSTM": torch.nn.LSTM(I, H)}, {}
    for cell in GEMM_CELLS:
        for engine in ("blas", "builtin"):
            models[f"{cell} {engine}"] = Recurrent(I, H, cell=cell, backend="cpu")
            knobs[f"{cell} {engine}"] = {"engine": engine}
        models[f"{cell} builtin"].load_state_dict(models[f"{cell} blas"].state_dict())
    fwd, train = _time_models(models, x, cfg.rounds, knobs)
    rows = []
    for name in models:
        rows.append(
            {
                "model": name,
                "fwd_s": fwd[name],
                "train_s": train[name],
                "fwd_ratio": fwd[name] / fwd["torch.nn.LSTM"],
                "train_ratio": train[name] / train["torch.nn.LSTM"],
            }
        )
    gain = {c: train[f"{c} blas"] / train[f"{c} builtin"] for c in GEMM_CELLS}
    log(
        f"  {shape}: fwd+bwd with the BLAS / with the built-in product: "
        + ", ".join(f"{c} {g:.2f}x" for c, g in gain.items())
    )
    return {"shape": list(shape), "rows": rows, "builtin_gain": gain}


def run_modern(cfg: BenchConfig, log=print) -> dict:
    """The "modern" section: see BenchConfig."""
    out = {"slstm": [], "min": [], "memory": []}
    for shape in cfg.shapes:
        out["slstm"].append(bench_slstm(shape, cfg, log))
    for T in cfg.min_steps:
        out["min"].append(bench_min(T, cfg, log))
    out["growth"] = growth(out["min"])
    if cfg.memory:
        for T in cfg.min_steps:
            out["memory"] += bench_modern_memory(T, cfg, log)
    return out


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(cfg: BenchConfig, log=print) -> dict:
    """The sections of `cfg` in one process (the modern section's memory in subprocesses)."""
    if "grid" in cfg.sections:
        ok, why = cpu.available()
        if not ok:
            raise RuntimeError(f"lstmlab bench needs the cpu backend, which is unavailable: {why}")
    info = machine()
    info["load_before"] = _load()
    info["matmul_peak_flops"] = matmul_peak()
    log(f"{info['cpu']}, {info['torch_threads']} threads, matmul peak {info['matmul_peak_flops'] / 1e9:.0f} GFLOP/s")
    result = {"config": {**asdict(BenchConfig()), **asdict(cfg)}, "machine": info}
    if "grid" in cfg.sections:
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
        result["shapes"], result["summary"] = shapes, summarise(shapes)
    if "modern" in cfg.sections:
        log("modern cells (issue #13)")
        result["modern"] = run_modern(cfg, log)
    if "gemm" in cfg.sections:
        info["gemm_engine"] = {"float32": cpu.gemm_engine(torch.float32), "float64": cpu.gemm_engine(torch.float64)}
        info["gemm_time_ratios"] = {
            "float32": cpu._extension().gemm_time_ratios(False),
            "float64": cpu._extension().gemm_time_ratios(True),
        }
        log(
            f"product engines (LSTMLAB_GEMM picks {info['gemm_engine']['float32']} for float32 here; "
            f"measured built-in / BLAS time: {_ratios(info['gemm_time_ratios']['float32'])})"
        )
        result["gemm"] = [bench_gemm(shape, cfg, log) for shape in cfg.shapes]
    info["load_after"] = _load()
    return result


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
        f"(2048^3 float32, torch.mm): {peak / 1e9:.0f} GFLOP/s."
        + (
            f" Load average (1, 5, 15 min) before the run: {m['load_before']}, after: {m['load_after']}."
            if m.get("load_before") is not None
            else ""
        ),
        "",
    ]
    if "shapes" in result:
        lines += _grid_markdown(result, peak)
    if "modern" in result:
        lines += _modern_markdown(result["modern"])
    if "gemm" in result:
        lines += _gemm_markdown(result["gemm"], m.get("gemm_engine", {}), m.get("gemm_time_ratios", {}))
    return "\n".join(lines) + "\n"


def _ratios(ratios: list[float]) -> str:
    return ", ".join(f"{r:.2f}" for r in ratios) if ratios else "n/a (no BLAS)"


def _gemm_markdown(res: list[dict], engine: dict, ratios: dict) -> list[str]:
    lines = [
        "### The product engines",
        "",
        f"The engine LSTMLAB_GEMM=auto picks on this machine: {engine.get('float32', 'n/a')} (float32), "
        "from its measurement at load: the built-in product's time over the BLAS's for a weight gradient, "
        "a 64-row product and an in-loop product at 8 rows, one thread "
        f"({_ratios(ratios.get('float32', []))}; below 1 in geometric mean: built-in). "
        "fwd+bwd ms and ratio to torch.nn.LSTM; gain = time with the BLAS / time with the built-in product.",
        "",
        "| B, T, I, H | " + " | ".join(f"{c} blas | {c} builtin | {c} gain" for c in GEMM_CELLS) + " |",
        "|---|" + "---:|" * (3 * len(GEMM_CELLS)),
    ]
    for r in res:
        by = {row["model"]: row for row in r["rows"]}
        cells = []
        for c in GEMM_CELLS:
            for e in ("blas", "builtin"):
                row = by[f"{c} {e}"]
                cells.append(f"{1e3 * row['train_s']:.2f} ({row['train_ratio']:.2f}x)")
            cells.append(f"{r['builtin_gain'][c]:.2f}x")
        lines.append(f"| {', '.join(map(str, r['shape']))} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _grid_markdown(result: dict, peak: float) -> list[str]:
    lines = [
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
    return lines + [""]


def _mib(b) -> str:
    return f"{b / 2**20:.1f}" if b is not None else "n/a"


def _modern_markdown(mod: dict) -> list[str]:
    lines = [
        "### sLSTM against torch.nn.LSTM",
        "",
        "slstm on its sequential route (backend), times in ms, ratio = slstm / torch.nn.LSTM "
        "(best of the rounds, the two interleaved).",
        "",
        "| B, T, I, H | backend | slstm fwd | LSTM fwd | fwd ratio | slstm fwd+bwd | LSTM fwd+bwd | fwd+bwd ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in mod["slstm"]:
        lines.append(
            f"| {', '.join(map(str, r['shape']))} | {r['backend']} | {1e3 * r['fwd_s']:.2f} | "
            f"{1e3 * r['lstm_fwd_s']:.2f} | {r['fwd_ratio']:.2f} | {1e3 * r['train_s']:.2f} | "
            f"{1e3 * r['lstm_train_s']:.2f} | {r['train_ratio']:.2f} |"
        )
    lines.append("")
    for res in mod["min"]:
        B, T, I, H = res["shape"]
        lines += [
            f"### minLSTM / minGRU, B={B}, T={T}, I={I}, H={H}",
            "",
            "| model | route | fwd ms | fwd+bwd ms | fwd vs GRU | fwd+bwd vs GRU |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['model']} | {r['route']} | {1e3 * r['fwd_s']:.2f} | {1e3 * r['train_s']:.2f} | "
                f"{r['fwd_vs_gru']:.2f} | {r['train_vs_gru']:.2f} |"
            )
        lines.append("")
        lines.append(
            "Scan speed-up over the sequential route (its time / the scan's; > 1: the scan is faster): "
            + "; ".join(
                f"{c} (vs {v['sequential']}) fwd {v['fwd']:.2f}x, fwd+bwd {v['train']:.2f}x"
                for c, v in res["scan_speedup"].items()
            )
            + "."
        )
        lines.append("")
        splits = {c: v["split"] for c, v in res["scan_speedup"].items() if v.get("split")}
        if splits:
            lines.append(
                "The sequential route's training step (kernel clock): products over all steps against the "
                "recurrence; no route that computes the same products can be faster than the bound: "
                + "; ".join(
                    f"{c} products {1e3 * v['products_s']:.2f} ms, recurrence {1e3 * v['recurrence_s']:.2f} ms "
                    f"({100 * v['recurrence_share']:.0f}%), bound {v['bound']:.2f}x"
                    for c, v in splits.items()
                )
                + "."
            )
            lines.append("")
    if mod.get("growth"):
        ts = next(iter(mod["growth"].values()))["T"]
        lines += [
            "### Growth with T (fwd+bwd ms)",
            "",
            "exponent: p in time ~ T^p from the first to the last T (1 = linear).",
            "",
            "| model | " + " | ".join(f"T={t}" for t in ts) + " | exponent |",
            "|---|" + "---:|" * (len(ts) + 1),
        ]
        for name, g in mod["growth"].items():
            p = f"{g['exponent']:.2f}" if g["exponent"] is not None else ""
            lines.append(f"| {name} | " + " | ".join(f"{1e3 * t:.1f}" for t in g["train_s"]) + f" | {p} |")
        lines.append("")
    if mod["memory"]:
        lines += [
            "### Peak memory of one training step (fwd+bwd)",
            "",
            "Rise of the resident-set high-water mark (/proc/self/status VmHWM, reset through "
            "/proc/self/clear_refs) over one step, in a fresh subprocess per model, after one "
            "warm-up step (the smaller of two steps); parameters and their gradients exist before.",
            "",
            "| T | model | peak MiB | vs torch.nn.LSTM |",
            "|---:|---|---:|---:|",
        ]
        for r in mod["memory"]:
            ratio = f"{r['vs_lstm']:.2f}" if r["vs_lstm"] is not None else "n/a"
            lines.append(f"| {r['T']} | {r['model']} | {_mib(r['peak_bytes'])} | {ratio} |")
        lines.append("")
    return lines


def _shape(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--shape {text!r} is invalid; allowed: B,T,I,H (four positive integers)")
    return tuple(int(p) for p in parts)


def _min_shape(text: str | None) -> tuple[int, int, int]:
    if text is None:
        return MIN_SHAPE
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--min-shape {text!r} is invalid; allowed: B,I,H (three positive integers)")
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
    if any(t < 1 for t in args.min_steps):
        raise ValueError(f"--min-steps {args.min_steps} is invalid; allowed: positive integers")
    cfg = BenchConfig(
        sections=tuple(dict.fromkeys(args.sections)),
        min_shape=_min_shape(args.min_shape),
        min_steps=tuple(args.min_steps),
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
    p = sub.add_parser(
        "bench", help="the cpu backend against torch.nn.LSTM and the reference loop; the modern cells' routes"
    )
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
    p.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=["grid"],
        help="grid: every cell on the grid against torch.nn.LSTM (default); modern: slstm on the grid against "
        "torch.nn.LSTM, minlstm / mingru parallel scan against their sequential route and torch.nn.GRU at "
        "--min-shape for each --min-steps, and peak memory in subprocesses (several minutes); gemm: lstm, gru "
        "and slstm with each matrix-product engine (BLAS, built-in) against torch.nn.LSTM on the grid",
    )
    default_min = ",".join(map(str, MIN_SHAPE))
    p.add_argument("--min-shape", help=f"B,I,H of the minlstm / mingru comparison (default {default_min})")
    p.add_argument(
        "--min-steps", nargs="+", type=int, default=list(MIN_STEPS), help="sequence lengths T of that comparison"
    )
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--json", help="write all numbers as JSON here")
    p.set_defaults(func=_main)
