"""`lstmlab bench` end to end on a tiny shape: every number it reports is there, and the
ratios, summary and report are made from the measured times. Nothing here asserts how long
anything took: that depends on the machine and its load, and is the benchmark's to report."""

import dataclasses
import math
import re

import pytest
import torch

from lstmlab import bench
from lstmlab.backends import cpu
from lstmlab.cli import main


@pytest.fixture(scope="module", autouse=True)
def cpu_backend():
    ok, why = cpu.available()
    if not ok:
        pytest.skip(why)


def a_time(x) -> bool:
    return isinstance(x, float) and 0 < x < math.inf


@pytest.mark.slow
def test_run_reports_times_ratios_memory_and_product_rate():
    cfg = bench.BenchConfig(cells=("lstm", "gru"), shapes=((2, 20, 3, 16),), rounds=2, reference_rounds=1)
    result = bench.run(cfg, log=lambda *_: None)
    rows = {r["model"]: r for r in result["shapes"][0]["rows"]}
    assert list(rows) == ["torch.nn.LSTM", "lstm", "gru"]
    base = rows["torch.nn.LSTM"]
    assert a_time(base["fwd_s"]) and a_time(base["train_s"])
    assert base["fwd_ratio"] == base["train_ratio"] == 1.0
    assert not {"vs_reference", "product_flops"} & set(base)  # torch has neither
    text = bench.markdown(result, "lstmlab bench --cells lstm gru")
    assert "### B=2, T=20, I=3, H=16" in text and "Geometric mean" in text
    for name in ("lstm", "gru"):
        r = rows[name]
        assert all(a_time(r[k]) for k in ("fwd_s", "train_s", "ref_fwd_s", "ref_train_s")), r
        # every ratio is the ratio of the times reported beside it
        assert r["fwd_ratio"] == r["fwd_s"] / base["fwd_s"]
        assert r["train_ratio"] == r["train_s"] / base["train_s"]
        assert r["vs_reference"] == r["ref_train_s"] / r["train_s"]
        assert r["product_flops"] is None or 0 < r["product_flops"] < math.inf  # None: no product time measured
        assert r["peak_bytes"] is None or r["peak_bytes"] >= 0
        # the report prints these same numbers
        assert (
            f"| {name} | {1e3 * r['fwd_s']:.2f} | {r['fwd_ratio']:.2f} | {1e3 * r['train_s']:.2f} | "
            f"{r['train_ratio']:.2f} | {r['vs_reference']:.0f}x |"
        ) in text
    summary = result["summary"]
    assert set(summary["per_cell"]) == {"lstm", "gru"}
    for name, s in summary["per_cell"].items():  # one shape: each cell's summary is its row
        assert s["train_worst"] == rows[name]["train_ratio"] and s["fwd_worst"] == rows[name]["fwd_ratio"]
        assert math.isclose(s["train_geomean"], rows[name]["train_ratio"])
    assert math.isclose(summary["train_geomean"], math.sqrt(rows["lstm"]["train_ratio"] * rows["gru"]["train_ratio"]))
    assert math.isclose(summary["fwd_geomean"], math.sqrt(rows["lstm"]["fwd_ratio"] * rows["gru"]["fwd_ratio"]))


def test_variants_run_every_cell_again_under_their_tuning(monkeypatch):
    seen = []
    split = cpu._split
    default = (cpu.current_tuning().GROUP_MIN_ROWS, cpu.current_tuning().CHUNK_STEPS)

    def spy(*args):  # the tuning each call is given
        seen.append((args[-1].GROUP_MIN_ROWS, args[-1].CHUNK_STEPS))
        return split(*args)

    monkeypatch.setattr(cpu, "_split", spy)
    variant = (("GROUP_MIN_ROWS", 1000), ("CHUNK_STEPS", 3))
    cfg = bench.BenchConfig(
        cells=("lstm",), shapes=((16, 6, 3, 8),), rounds=1, reference_rounds=1, memory=False, variants=(variant,)
    )
    result = bench.run(cfg, log=lambda *_: None)
    rows = {r["model"]: r for r in result["shapes"][0]["rows"]}
    assert list(rows) == ["torch.nn.LSTM", "lstm", "lstm [GROUP_MIN_ROWS=1000,CHUNK_STEPS=3]"]
    assert "vs_reference" in rows["lstm"] and "vs_reference" not in rows["lstm [GROUP_MIN_ROWS=1000,CHUNK_STEPS=3]"]
    assert {default, (1000, 3)} <= set(seen)  # each model ran under its own constants
    assert (cpu.current_tuning().GROUP_MIN_ROWS, cpu.current_tuning().CHUNK_STEPS) == default  # and it is back


def test_tuning_checks_names_and_values_and_restores():
    with pytest.raises(ValueError, match="tuning GROUP_MIN_ROW=3: unknown; allowed: SMALL_GEMM_LIMIT"):
        with cpu.tuning(GROUP_MIN_ROW=3):
            pass
    with pytest.raises(ValueError, match=r"USE_PACKED_GEMM=2 is invalid; allowed: a whole number >= 0 \(0 or 1\)"):
        with cpu.tuning(USE_PACKED_GEMM=2):
            pass
    before = cpu.current_tuning()
    with pytest.raises(RuntimeError):
        with cpu.tuning(GROUP_MAX_WORK=5, USE_PACKED_GEMM=0):
            now = cpu.current_tuning()
            assert (now.GROUP_MAX_WORK, now.USE_PACKED_GEMM, now.CHUNK_STEPS) == (5, 0, 0)
            raise RuntimeError
    assert cpu.current_tuning() is before and before == cpu.Tuning() and before.GROUP_MAX_WORK == 1 << 23
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.GROUP_MAX_WORK = 5
    with pytest.raises(ValueError, match=r"tuning CHUNK_STEPS=-1 is invalid; allowed: a whole number >= 0"):
        cpu.Tuning(CHUNK_STEPS=-1)
    with pytest.raises(ValueError, match=r"tuning force_cuts=\(1.5,\) is invalid; allowed: a tuple of fractions"):
        cpu.force_split(cuts=(1.5,))


def test_force_split_forces_groups_or_slices_and_restores():
    tune = cpu.current_tuning()
    with cpu.force_split(groups=3):
        assert cpu._split(16, 64, 1 << 30, 16, cpu.current_tuning()) == ((0, 64), 3)
        assert cpu._split(2, 64, 1 << 30, 16, cpu.current_tuning()) == ((0, 64), 2)  # at most one group a row
    with cpu.force_split(cuts=(0.25, 0.5)):
        assert cpu._split(1, 8, 1, 16, cpu.current_tuning()) == ((0, 2, 4, 8), 1)
        assert cpu._split(1, 3, 1, 16, cpu.current_tuning()) == ((0, 1, 2, 3), 1)  # each cut at least unit 1
    assert cpu.current_tuning() is tune


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--shape", "1,2,3"], r"--shape '1,2,3' is invalid"),
        (["--cells", "lsmt"], r"--cells lsmt: not a registered cell the cpu backend computes"),
        (["--rounds", "0"], r"--rounds 0 / --reference-rounds 2 is invalid"),
        (["--variant", "CHUNK_STEPS"], r"--variant 'CHUNK_STEPS' is invalid; allowed: NAME=VALUE"),
        (["--variant", "CHUNK=2"], r"--variant 'CHUNK=2': tuning CHUNK=2: unknown; allowed: SMALL_GEMM_LIMIT"),
        (["--min-shape", "16,128"], r"--min-shape '16,128' is invalid; allowed: B,I,H"),
        (["--min-steps", "256", "0"], r"--min-steps \[256, 0\] is invalid; allowed: positive integers"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, pattern, capsys):
    assert main(["bench", *args]) == 2
    assert re.search(pattern, capsys.readouterr().err)


# ---- the modern section (issue #13) ----------------------------------------------------------
MODERN = dict(sections=("modern",), shapes=((2, 12, 3, 8),), min_shape=(2, 3, 4), min_steps=(10, 40), rounds=1)


def test_modern_section_reports_routes_ratios_and_growth_from_its_times():
    cfg = bench.BenchConfig(**MODERN, memory=False)
    result = bench.run(cfg, log=lambda *_: None)
    assert "shapes" not in result and "summary" not in result  # the grid did not run
    mod = result["modern"]
    (s,) = mod["slstm"]
    assert s["shape"] == [2, 12, 3, 8] and s["backend"] == bench.sequential_backend("slstm")
    assert all(a_time(s[k]) for k in ("fwd_s", "train_s", "lstm_fwd_s", "lstm_train_s"))
    assert s["fwd_ratio"] == s["fwd_s"] / s["lstm_fwd_s"] and s["train_ratio"] == s["train_s"] / s["lstm_train_s"]
    assert [m["T"] for m in mod["min"]] == [10, 40]
    seq = {c: f"{c} {bench.sequential_backend(c)}" for c in ("minlstm", "mingru")}
    text = bench.markdown(result, "lstmlab bench --sections modern")
    for res in mod["min"]:
        rows = {r["model"]: r for r in res["rows"]}
        torch_models = ["torch.nn.GRU", "torch.nn.LSTM"]
        assert list(rows) == ["minlstm scan", seq["minlstm"], "mingru scan", seq["mingru"], *torch_models]
        assert [r["route"] for r in res["rows"]] == ["scan", "sequential"] * 2 + ["torch"] * 2
        gru = rows["torch.nn.GRU"]
        for name, r in rows.items():
            assert a_time(r["fwd_s"]) and a_time(r["train_s"])
            assert r["fwd_vs_gru"] == r["fwd_s"] / gru["fwd_s"] and r["train_vs_gru"] == r["train_s"] / gru["train_s"]
            assert f"| {name} | {r['route']} | {1e3 * r['fwd_s']:.2f} | {1e3 * r['train_s']:.2f} |" in text
        for cell, sp in res["scan_speedup"].items():
            assert sp["sequential"] == seq[cell]
            assert sp["train"] == rows[seq[cell]]["train_s"] / rows[f"{cell} scan"]["train_s"]
            assert sp["fwd"] == rows[seq[cell]]["fwd_s"] / rows[f"{cell} scan"]["fwd_s"]
            assert f"{cell} (vs {seq[cell]}) fwd {sp['fwd']:.2f}x, fwd+bwd {sp['train']:.2f}x" in text
            if seq[cell].endswith(" cpu"):  # the kernel's clock splits its step: products, recurrence, bound
                split = sp["split"]
                assert math.isclose(split["bound"], (split["products_s"] + split["recurrence_s"]) / split["products_s"])
                assert f"{cell} products {1e3 * split['products_s']:.2f} ms" in text
                assert f"bound {split['bound']:.2f}x" in text
    for name, g in mod["growth"].items():
        t = [next(r["train_s"] for r in m["rows"] if r["model"] == name) for m in mod["min"]]
        assert g["train_s"] == t and g["T"] == [10, 40]
        assert math.isclose(g["exponent"], math.log(t[1] / t[0]) / math.log(4))  # time ~ T^p
    assert f"| 2, 12, 3, 8 | {s['backend']} |" in text and f"{s['train_ratio']:.2f} |" in text
    assert "### Growth with T" in text and "Peak memory" not in text and mod["memory"] == []


def test_modern_section_gives_a_cells_two_routes_the_same_weights(monkeypatch):
    seen = {}
    timer = bench._time_models

    def spy(models, x, rounds, knobs=None):
        seen.update(models=models, x=x)
        return timer(models, x, rounds, knobs)

    monkeypatch.setattr(bench, "_time_models", spy)
    cfg = bench.BenchConfig(**MODERN, memory=False)
    bench.bench_min(40, cfg, log=lambda *_: None)
    models, x = seen["models"], seen["x"]
    for cell in ("minlstm", "mingru"):
        scan_m, seq_m = models[f"{cell} scan"], models[f"{cell} {bench.sequential_backend(cell)}"]
        assert scan_m.backend == "scan" and seq_m.backend == bench.sequential_backend(cell)
        for (n, a), (m, b) in zip(scan_m.state_dict().items(), seq_m.state_dict().items(), strict=True):
            assert n == m and torch.equal(a, b)
        with torch.no_grad():
            torch.testing.assert_close(scan_m(x)[0], seq_m(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_modern_memory_is_measured_in_a_subprocess():
    B, T, I, H = 4, 300, 8, 16
    lstm = bench.memory_in_subprocess({"torch": "LSTM"}, (B, T, I, H))
    if lstm is None:
        pytest.skip("no /proc/self/clear_refs here: peak memory is not measurable")
    scan = bench.memory_in_subprocess({"cell": "minlstm", "backend": "scan"}, (B, T, I, H))
    assert lstm >= 0
    # the scan saves three (T, B, H) float32 tensors for its backward (log a, h0, h) beside the
    # gates' (T, B, 3H) pre-activations: at least 3 * T*B*H*4 bytes are live at the peak
    assert scan >= 3 * T * B * H * 4


def test_gemm_section_runs_each_cell_on_both_engines_with_the_same_weights(monkeypatch):
    """--sections gemm: lstm, gru and slstm on the BLAS and on the built-in product (the
    same weights, the same outputs to float tolerance), with torch.nn.LSTM in the same
    rounds; each engine is in force while its model runs, and the one set before afterwards;
    the ratios and gains are made from the measured times."""
    seen, engines = {}, {}
    timer = bench._time_models

    def spy(models, x, rounds, knobs=None):
        seen.update(models=models, x=x, knobs=knobs)
        return timer(models, x, rounds, knobs)

    monkeypatch.setattr(bench, "_time_models", spy)
    before = cpu.gemm_engine()
    cfg = bench.BenchConfig(sections=("gemm",), shapes=((2, 12, 3, 8),), rounds=1, memory=False)
    result = bench.run(cfg, log=lambda *_: None)
    assert cpu.gemm_engine() == before
    models, knobs = seen["models"], seen["knobs"]
    assert list(models) == ["torch.nn.LSTM"] + [f"{c} {e}" for c in bench.GEMM_CELLS for e in ("blas", "builtin")]
    for name, k in knobs.items():
        engine = name.split()[1]
        assert k == {"engine": engine}
        bench._tuned(lambda name=name: engines.__setitem__(name, cpu.gemm_engine()), k)()
        assert engines[name] == engine
    for c in bench.GEMM_CELLS:
        a, b = models[f"{c} blas"], models[f"{c} builtin"]
        for (n, p), (m, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert n == m and torch.equal(p, q)
        with torch.no_grad():
            torch.testing.assert_close(a(seen["x"])[0], b(seen["x"])[0], rtol=1e-5, atol=1e-5)
    (res,) = result["gemm"]
    rows = {r["model"]: r for r in res["rows"]}
    lstm = rows["torch.nn.LSTM"]
    for r in rows.values():
        assert a_time(r["fwd_s"]) and a_time(r["train_s"])
        assert r["train_ratio"] == r["train_s"] / lstm["train_s"] and r["fwd_ratio"] == r["fwd_s"] / lstm["fwd_s"]
    for c in bench.GEMM_CELLS:
        assert res["builtin_gain"][c] == rows[f"{c} blas"]["train_s"] / rows[f"{c} builtin"]["train_s"]
    text = bench.markdown(result, "lstmlab bench --sections gemm")
    assert "### The product engines" in text and f"| 2, 12, 3, 8 | {1e3 * rows['lstm blas']['train_s']:.2f} (" in text
    assert result["machine"]["gemm_engine"]["float32"] in ("blas", "builtin")


def test_using_gemm_sets_the_engine_for_a_block_and_checks_its_name():
    before = cpu.gemm_engine()
    with cpu.using_gemm("blas"):
        assert cpu.gemm_engine() == "blas" and cpu.gemm_engine(torch.float64) == "blas"
        with cpu.using_gemm("builtin"):
            assert cpu.gemm_engine() == "builtin"
        assert cpu.gemm_engine() == "blas"
    assert cpu.gemm_engine() == before
    with cpu.using_gemm(None):
        assert cpu.gemm_engine() == before
    with pytest.raises(ValueError, match=r"engine='mkl'.*allowed: 'blas', 'builtin'"):
        with cpu.using_gemm("mkl"):
            pass


def test_recurrence_share_splits_a_min_cells_step_by_the_kernel_clock():
    """The sequential route's training step split into its products and its recurrence (the
    kernel clock's phases), and the bound no route computing the same products can pass:
    total / products."""
    torch.manual_seed(0)
    m = bench.Recurrent(8, 16, cell="mingru", backend="cpu")
    x = torch.randn(50, 4, 8, requires_grad=True)
    s = bench._recurrence_share(m, x, steps=2)
    assert a_time(s["products_s"]) and a_time(s["recurrence_s"])
    total = s["products_s"] + s["recurrence_s"]
    assert math.isclose(s["recurrence_share"], s["recurrence_s"] / total)
    assert math.isclose(s["bound"], total / s["products_s"]) and s["bound"] > 1
