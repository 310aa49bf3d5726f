"""`lstmlab bench` end to end on a tiny shape: every number it reports is there and sane."""
import math
import re

import pytest

from lstmlab import bench
from lstmlab.backends import cpu
from lstmlab.cli import main


@pytest.fixture(scope="module", autouse=True)
def cpu_backend():
    ok, why = cpu.available()
    if not ok:
        pytest.skip(why)


def test_run_reports_times_ratios_memory_and_product_rate():
    cfg = bench.BenchConfig(cells=("lstm", "gru"), shapes=((2, 20, 3, 16),), rounds=2, reference_rounds=1)
    result = bench.run(cfg, log=lambda *_: None)
    rows = {r["model"]: r for r in result["shapes"][0]["rows"]}
    assert list(rows) == ["torch.nn.LSTM", "lstm", "gru"]
    assert rows["torch.nn.LSTM"]["train_ratio"] == 1.0
    for name in ("lstm", "gru"):
        r = rows[name]
        assert 0 < r["fwd_s"] < 1 and 0 < r["train_s"] < 1
        assert math.isclose(r["train_ratio"], r["train_s"] / rows["torch.nn.LSTM"]["train_s"])
        assert r["vs_reference"] > 1 and r["product_flops"] > 0
        assert r["peak_bytes"] is None or r["peak_bytes"] >= 0
    assert set(result["summary"]["per_cell"]) == {"lstm", "gru"}
    text = bench.markdown(result, "lstmlab bench --cells lstm gru")
    assert "### B=2, T=20, I=3, H=16" in text and "| gru |" in text and "Geometric mean" in text


def test_variants_run_every_cell_again_under_their_tuning(monkeypatch):
    seen = []
    split = cpu._split
    default = (cpu.GROUP_MIN_ROWS, cpu.CHUNK_STEPS)

    def spy(*args):
        seen.append((cpu.GROUP_MIN_ROWS, cpu.CHUNK_STEPS))
        return split(*args)
    monkeypatch.setattr(cpu, "_split", spy)
    variant = (("GROUP_MIN_ROWS", 1000), ("CHUNK_STEPS", 3))
    cfg = bench.BenchConfig(cells=("lstm",), shapes=((16, 6, 3, 8),), rounds=1, reference_rounds=1, memory=False,
                            variants=(variant,))
    result = bench.run(cfg, log=lambda *_: None)
    rows = {r["model"]: r for r in result["shapes"][0]["rows"]}
    assert list(rows) == ["torch.nn.LSTM", "lstm", "lstm [GROUP_MIN_ROWS=1000,CHUNK_STEPS=3]"]
    assert "vs_reference" in rows["lstm"] and "vs_reference" not in rows["lstm [GROUP_MIN_ROWS=1000,CHUNK_STEPS=3]"]
    assert {default, (1000, 3)} <= set(seen)  # each model ran under its own constants
    assert (cpu.GROUP_MIN_ROWS, cpu.CHUNK_STEPS) == default  # and they are back


def test_tuning_checks_names_and_values_and_restores():
    with pytest.raises(ValueError, match="tuning GROUP_MIN_ROW=3: unknown; allowed: SMALL_GEMM_LIMIT"):
        with cpu.tuning(GROUP_MIN_ROW=3):
            pass
    with pytest.raises(ValueError, match=r"USE_PACKED_GEMM=2 is invalid; allowed: a whole number >= 0 \(0 or 1\)"):
        with cpu.tuning(USE_PACKED_GEMM=2):
            pass
    before = (cpu.GROUP_MAX_WORK, cpu.USE_PACKED_GEMM)
    with pytest.raises(RuntimeError):
        with cpu.tuning(GROUP_MAX_WORK=5, USE_PACKED_GEMM=0):
            assert cpu.GROUP_MAX_WORK == 5 and cpu.USE_PACKED_GEMM is False
            raise RuntimeError
    assert (cpu.GROUP_MAX_WORK, cpu.USE_PACKED_GEMM) == before


@pytest.mark.parametrize("args,pattern", [
    (["--shape", "1,2,3"], r"--shape '1,2,3' is invalid"),
    (["--cells", "lsmt"], r"--cells lsmt: not registered"),
    (["--rounds", "0"], r"--rounds 0 / --reference-rounds 2 is invalid"),
    (["--variant", "CHUNK_STEPS"], r"--variant 'CHUNK_STEPS' is invalid; allowed: NAME=VALUE"),
    (["--variant", "CHUNK=2"], r"--variant 'CHUNK=2': tuning CHUNK=2: unknown; allowed: SMALL_GEMM_LIMIT"),
])
def test_bad_arguments_are_one_line_errors(args, pattern, capsys):
    assert main(["bench", *args]) == 2
    assert re.search(pattern, capsys.readouterr().err)
