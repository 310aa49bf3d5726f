"""The kernel's matrix-product engine (csrc/gemm.h): `cpu.gemm_engine(dtype)` names it
("builtin": the kernel's own register-blocked product; "blas": the BLAS torch is linked
with), the extension's set_gemm_choice switches it at any time, and LSTMLAB_GEMM
(auto|blas|builtin, read when the extension first loads) sets it for a process; an invalid
value makes the cpu backend unavailable with a message that says why. Both engines give the
reference backend's results (the generic kernel and the modern path, forward and backward,
the in-loop products too) and each other's to rounding."""

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmlab
from conftest import assert_close
from lstmlab.backends import cpu, csrc

pytestmark = pytest.mark.usefixtures("cpu_backend")

ENGINES = ("blas", "builtin")


@pytest.fixture
def ext():
    """The extension; afterwards the engine choice this process started with (LSTMLAB_GEMM,
    auto by default) is restored, whatever the test set."""
    e = cpu._extension()
    try:
        yield e
    finally:
        e.set_gemm_choice(e.gemm_choices[os.environ.get("LSTMLAB_GEMM", "auto")])


# ---- naming and choosing the engine ----------------------------------------------------------
def test_gemm_engine_names_one_of_two_engines_per_dtype():
    for dtype in (torch.float32, torch.float64):
        assert cpu.gemm_engine(dtype) in ENGINES
    assert cpu.gemm_engine() == cpu.gemm_engine(torch.float32)  # the default dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.complex64])
def test_gemm_engine_rejects_other_dtypes(dtype):
    with pytest.raises(ValueError, match=rf"dtype={dtype} is not supported; allowed: torch.float32, torch.float64"):
        cpu.gemm_engine(dtype)


def test_gemm_choices_table(ext):
    assert dict(ext.gemm_choices) == {"auto": 0, "blas": 1, "builtin": 2}


def test_set_gemm_choice_overrides_at_any_time_and_auto_keeps_its_measurement(ext):
    """blas and builtin set the engine of both dtypes; auto goes back to the measured choice,
    which is measured once per process (the same answer every time)."""
    ext.set_gemm_choice(ext.gemm_choices["auto"])
    measured = {dt: cpu.gemm_engine(dt) for dt in (torch.float32, torch.float64)}
    for name in ("blas", "builtin", "blas", "auto", "builtin", "auto"):
        ext.set_gemm_choice(ext.gemm_choices[name])
        for dt in (torch.float32, torch.float64):
            assert cpu.gemm_engine(dt) == (measured[dt] if name == "auto" else name), (name, dt)


def test_auto_takes_the_builtin_product_where_its_measured_time_ratios_say_so(ext):
    """The measurement at load: three time ratios (built-in / BLAS) per dtype, and auto's
    choice is the built-in product exactly where their geometric mean is below 1."""
    ext.set_gemm_choice(ext.gemm_choices["auto"])
    for double, dtype in ((False, torch.float32), (True, torch.float64)):
        ratios = ext.gemm_time_ratios(double)
        if not ext.have_blas:
            assert ratios == [] and cpu.gemm_engine(dtype) == "builtin"
            continue
        assert len(ratios) == 3 and all(0 < r < float("inf") for r in ratios), ratios
        geomean = (ratios[0] * ratios[1] * ratios[2]) ** (1 / 3)
        assert cpu.gemm_engine(dtype) == ("builtin" if geomean < 1 else "blas"), ratios
        assert ext.gemm_time_ratios(double) == ratios  # measured once


@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_set_gemm_choice_refuses_unknown_codes(ext, bad):
    before = cpu.gemm_engine(torch.float64)
    with pytest.raises(RuntimeError, match=f"unknown gemm choice {bad}"):
        ext.set_gemm_choice(bad)
    assert cpu.gemm_engine(torch.float64) == before  # unchanged


# ---- the engines' products against torch's ---------------------------------------------------
# (M, N, K): one element; no depth; fewer columns than a vector or a panel holds (dot
# products, or C^T formed, or a part-filled vector: masked loads and stores); one and
# several row blocks (128 rows) and depth blocks (512), shared between the threads by rows
# or by columns of panels (few rows), or not shared (under 2^20 multiply-adds)
PRODUCT_SHAPES = [
    (1, 1, 1),
    (5, 6, 0),
    (5, 1, 7),
    (130, 1, 128),
    (37, 3, 600),
    (9, 7, 5),
    (300, 24, 513),
    (64, 200, 256),
    (3, 50, 1040),
    (129, 33, 20),
    (520, 40, 300),
    (260, 100, 600),
    (200, 12, 700),
    (300, 20, 513),
    (24, 400, 200),
    (40, 10, 3000),
]


def _in_wider(rows, cols, g, dtype):
    """A rows x cols operand whose rows are 3 apart more than their length (the columns 1 to
    cols of a wider tensor), and that tensor."""
    wide = torch.randn(rows, cols + 3, generator=g, dtype=dtype)
    return wide[:, 1 : cols + 1], wide


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine", ENGINES)
def test_products_match_torch_within_the_dot_product_error_bound(ext, engine, dtype):
    """C [+]= op(A) op(B), each operand plain or transposed, every one a slice of a wider
    tensor (leading dimensions beyond the widths), with 4 threads: the float64 product's
    value within the bound on a sum of K products, 2 (K + 1) eps (|op(A)| |op(B)| + |C|),
    and C's tensor untouched outside the slice."""
    g = torch.Generator().manual_seed(0)
    eps = torch.finfo(dtype).eps
    ext.set_gemm_choice(ext.gemm_choices[engine])
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        for M, N, K in PRODUCT_SHAPES:
            for trans_a in (False, True):
                for trans_b in (False, True):
                    A, _ = _in_wider(*((K, M) if trans_a else (M, K)), g, dtype)
                    B, _ = _in_wider(*((N, K) if trans_b else (K, N)), g, dtype)
                    C0, C0_wide = _in_wider(M, N, g, dtype)
                    a, b = (A.t() if trans_a else A).double(), (B.t() if trans_b else B).double()
                    for accumulate in (False, True):
                        C_wide = C0_wide.clone()
                        C = C_wide[:, 1 : N + 1]
                        ext.product(trans_a, trans_b, A, B, C, accumulate)
                        want = a @ b + (C0.double() if accumulate else 0)
                        bound = 2 * (K + 1) * eps * (a.abs() @ b.abs() + C0.double().abs())
                        err = (C.double() - want).abs()
                        where = (
                            f"{engine} {dtype} M={M} N={N} K={K} trans_a={trans_a} trans_b={trans_b} acc={accumulate}"
                        )
                        assert bool((err <= bound).all()), f"{where}: max error {float(err.max()):.3g}"
                        outside = torch.ones_like(C_wide, dtype=torch.bool)
                        outside[:, 1 : N + 1] = False
                        assert torch.equal(C_wide[outside], C0_wide[outside]), f"{where}: wrote outside C"
    finally:
        torch.set_num_threads(threads)


def test_product_refuses_what_it_cannot_multiply(ext):
    f = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="shapes of op\\(A\\), op\\(B\\) and C do not agree"):
        ext.product(False, False, f, f, torch.zeros(2, 3), False)
    with pytest.raises(RuntimeError, match="row-major 2-D CPU tensors of one dtype"):
        ext.product(False, False, f, torch.zeros(3, 3, dtype=torch.float64), f, False)
    with pytest.raises(RuntimeError, match="row-major 2-D CPU tensors of one dtype"):
        ext.product(False, False, f, torch.zeros(3, 3), torch.zeros(3, 2).t(), False)
    with pytest.raises(RuntimeError, match="dtype Half is not supported"):
        ext.product(False, False, f.half(), f.half(), f.half(), False)


# ---- both engines compute the same ------------------------------------------------------------
def run_layer_and_grads(model, x0, hx0, lengths):
    """Output, final states and the gradients of x, the initial state and every parameter of
    a packed run of `model` under a fixed loss."""
    x = x0.clone().requires_grad_()
    hx = [h.clone().requires_grad_() for h in hx0]
    model.zero_grad()
    out, state = model(pack_padded_sequence(x, lengths, enforce_sorted=False), tuple(hx) if len(hx) > 1 else hx[0])
    state = state if isinstance(state, tuple) else (state,)
    loss = (out.data * out.data.cos()).sum() + sum((s * s.sin()).sum() for s in state if s.requires_grad)
    loss.backward()
    got = {"output": out.data.detach(), **{f"final {k}": s.detach() for k, s in enumerate(state)}, "d x": x.grad}
    got.update({f"d state {k}": torch.zeros_like(h) if h.grad is None else h.grad for k, h in enumerate(hx)})
    got.update({f"d {n}": p.grad.clone() for n, p in model.named_parameters()})
    return got


CELLS = {
    "lstm": ("lstm", {}, contextlib.nullcontext),
    "slstm-heads2-blocks": ("slstm", {"heads": 2}, lambda: cpu.force_split(cuts=(0.5,))),
    "minlstm": ("minlstm", {}, contextlib.nullcontext),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CELLS)
def test_both_engines_match_reference_and_each_other(ext, name, dtype):
    """A bidirectional layer over packed sequences, forward and backward, with each engine:
    the input projection and the weight-gradient products, and (SMALL_GEMM_LIMIT=0) the
    in-loop recurrent products through the engine too (float32 with the BLAS: MKL's packed
    weights, and without them)."""
    cell, options, split = CELLS[name]
    I, H, T, B = 7, 24, 9, 5
    kw = dict(cell=cell, bidirectional=True, dtype=dtype, **options)
    torch.manual_seed(0)
    ref = lstmlab.Recurrent(I, H, backend="reference", **kw)
    ours = lstmlab.Recurrent(I, H, backend="cpu", **kw)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(T, B, I, generator=g, dtype=dtype)
    hx0 = [(torch.rand if n == "n" else torch.randn)(2, B, H, generator=g, dtype=dtype) for n in ref.spec.state_names]
    lengths = torch.tensor([9, 4, 7, 1, 9])
    want = run_layer_and_grads(ref, x0, hx0, lengths)
    runs = {}
    for eng in ENGINES:
        for limit, packed in [(1 << 16, 1), (0, 1), (0, 0)]:
            tune = cpu.tuning(SMALL_GEMM_LIMIT=limit, GROUP_SMALL_GEMM_LIMIT=limit, USE_PACKED_GEMM=packed)
            with cpu.using_gemm(eng), split(), tune:
                assert cpu.gemm_engine(dtype) == eng
                runs[eng, limit, packed] = run_layer_and_grads(ours, x0, hx0, lengths)
    for key, got in runs.items():
        assert got.keys() == want.keys()
        for k in want:
            tol = "float32_gradient" if dtype == torch.float32 and k.startswith("d ") else dtype
            assert_close(got[k], want[k], msg=f"{name} {key} vs reference: {k}", tol=tol)
            other = runs[("builtin" if key[0] == "blas" else "blas", *key[1:])]
            assert_close(got[k], other[k], msg=f"{name} {key} vs the other engine: {k}", tol=tol)


# ---- LSTMLAB_GEMM --------------------------------------------------------------------------------
def run_python(code, **env):
    """A fresh interpreter (the variable is read when the extension first loads) that finds
    the extension this process built: the same build directory, so nothing is recompiled
    (unless the sources changed meanwhile)."""
    full = {**os.environ, "LSTMLAB_BUILD_DIR": str(csrc.build_dir()), **env}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


REPORT = """
import json, os, torch
import lstmlab
from lstmlab.backends import cpu
ok, why = cpu.available()
result = {"ok": ok, "why": why}
if ok:
    result["engines"] = [cpu.gemm_engine(torch.float32), cpu.gemm_engine(torch.float64)]
    ext = cpu._extension()
    ext.set_gemm_choice(ext.gemm_choices["builtin"] if result["engines"][0] == "blas" else ext.gemm_choices["blas"])
    result["overridden"] = [cpu.gemm_engine(torch.float32), cpu.gemm_engine(torch.float64)]
    torch.manual_seed(0)
    ext.set_gemm_choice(ext.gemm_choices[os.environ["LSTMLAB_GEMM"]])
    ref = lstmlab.Recurrent(3, 16, cell="slstm", heads=2, dtype=torch.float64, backend="reference")
    ours = lstmlab.Recurrent(3, 16, cell="slstm", heads=2, dtype=torch.float64, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    with cpu.force_split(cuts=(0.5,)):
        result["max_diff"] = float((ours(x)[0] - ref(x)[0]).abs().max())
else:
    try:
        cpu.gemm_engine(torch.float32)
    except RuntimeError as e:
        result["raised"] = str(e)
print(json.dumps(result))
"""


@pytest.mark.slow
def test_an_invalid_LSTMLAB_GEMM_makes_the_backend_unavailable_and_says_why():
    r = run_python(REPORT, LSTMLAB_GEMM="bogus")
    assert r["ok"] is False
    for word in ("LSTMLAB_GEMM", "'bogus'", "auto", "blas", "builtin"):
        assert word in r["why"], (word, r["why"])
    assert r["raised"] == r["why"]


@pytest.mark.slow
@pytest.mark.parametrize("choice", ENGINES)
def test_LSTMLAB_GEMM_sets_the_engine_of_a_process(choice):
    """Both dtypes use the engine named; set_gemm_choice still overrides it; the results are
    the reference's."""
    r = run_python(REPORT, LSTMLAB_GEMM=choice)
    assert r["ok"] is True, r["why"]
    assert r["engines"] == [choice, choice]
    other = "builtin" if choice == "blas" else "blas"
    assert r["overridden"] == [other, other]
    assert 0 <= r["max_diff"] < 1e-10


# ---- large recurrent weights: read in place by the built-in product -------------------------
ONE_WORKER = dict(PARALLEL_MIN_WORK=1 << 40, GROUP_MAX_WORK=0)


def _builtin_against_reference(cell, H, T, split, **kw):
    """One layer's output and gradients on the cpu backend with the built-in product, under
    `split()` (a function that returns a context manager), against the reference backend's."""
    torch.manual_seed(0)
    ref = lstmlab.Recurrent(3, H, cell=cell, backend="reference", **kw)
    fast = lstmlab.Recurrent(3, H, cell=cell, backend="cpu", **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, 2, 3)
    results = {}
    for name, m in (("reference", ref), ("cpu", fast)):
        xs = x.clone().requires_grad_()
        with cpu.using_gemm("builtin"), split():
            out, _ = m(xs)
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            grads = torch.autograd.grad(out, [xs, *m.parameters()], g)
        results[name] = [out.detach(), *grads]
    for a, b in zip(results["cpu"], results["reference"], strict=True):
        assert_close(a, b, tol="float32_gradient")


@pytest.mark.parametrize(
    "cell,H,split",
    [
        # FGR at H = 512 in two slices: its weights are 13.6 MB, over the 8 MB bound on the
        # built-in product's copies (gemm.h StepProduct), so the backward product reads a
        # slice's weight_gg blocks in place, group by group
        ("fgr", 512, {"cuts": (0.5,)}),
        # FGR and slstm (H = 768, 9.4 MB) in one worker: the backward product reads the
        # weights in place, not in panels
        ("fgr", 512, {}),
        ("slstm", 768, {}),
    ],
)
def test_weights_over_the_copy_bound_are_read_in_place_with_the_reference_results(ext, cell, H, split):
    forced = (lambda: cpu.force_split(**split)) if split else (lambda: cpu.tuning(**ONE_WORKER))
    _builtin_against_reference(cell, H, 3, forced)


@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("gru", {}), ("slstm", {"heads": 4}), ("slstm", {})])
def test_weights_packed_in_panels_by_both_threads(ext, cell, kw):
    """Recurrent weights of 1 MB (H = 256) are copied into the built-in product's panels by
    the threads side by side (gemm.h gather_panels), in torch's row order through slstm's row
    map where its units are cut into blocks: the reference's results."""
    split = (lambda: cpu.force_split(cuts=(0.5,))) if cell == "slstm" else contextlib.nullcontext
    _builtin_against_reference(cell, 256, 4, split, **kw)
