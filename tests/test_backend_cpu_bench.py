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


@pytest.mark.parametrize("args,pattern", [
    (["--shape", "1,2,3"], r"--shape '1,2,3' is invalid"),
    (["--cells", "lsmt"], r"--cells lsmt: not registered"),
    (["--rounds", "0"], r"--rounds 0 / --reference-rounds 2 is invalid"),
])
def test_bad_arguments_are_one_line_errors(args, pattern, capsys):
    assert main(["bench", *args]) == 2
    assert re.search(pattern, capsys.readouterr().err)
