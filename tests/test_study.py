"""The gradient-flow study end to end: `lstmlab flow` writes flow.json, figures and a report
whose numbers say what the theory says."""
import json
import math

import pytest

from conftest import approx
from lstmlab.cli import main

CELLS = "rnn-tanh,rnn-sigmoid,lstm1997,lstm,gru"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    rc = main(["flow", "--cells", CELLS, "--steps", "40", "--hidden", "8", "--batch", "3",
               "--heatmap-stride", "4", "--forget-bias-sweep", "0,3", "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "flow.json").read_text())


@pytest.mark.slow
def test_files_written(study):
    out, res = study
    for name in ["flow.json", "report.html", "gradient_by_lag.png", "lag_heatmaps.png", "lyapunov.png",
                 "cell_path.png", "theory.png"]:
        data = (out / name).read_bytes()
        assert len(data) > 500, name
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    html = (out / "report.html").read_text()
    for cell in CELLS.split(","):
        assert f"<b>{cell}</b>" in html
    assert res["config"]["steps"] == 40 and list(res["cells"]) == CELLS.split(",")


@pytest.mark.slow
def test_lstm1997_carries_error_without_loss(study):
    r = study[1]["cells"]["lstm1997"]
    g = r["grad_by_lag"]
    assert all(v == approx(g[1], "float64_closed_form") for v in g[1:])  # flat after the last step
    assert r["lyapunov_top"] == approx(0.0, "float64_closed_form")
    assert r["horizon_1e-6"] is None and r["horizon_empirical"] is None  # infinite / never
    assert all(s == pytest.approx(1.0) for s in r["cell_path"]["share"])


@pytest.mark.slow
def test_plain_rnns_vanish_and_the_rates_agree(study):
    cells = study[1]["cells"]
    sig = cells["rnn-sigmoid"]
    assert sig["grad_by_lag"][-1] < 1e-20 and sig["horizon_empirical"] < 20
    for name in ("rnn-tanh", "rnn-sigmoid", "gru"):
        r = cells[name]
        assert r["decay_rate"] > 0
        # the top Lyapunov exponent is the measured exponential decay rate of the gradient
        assert r["decay_rate_fit"] == approx(r["decay_rate"], "decay_fit_short")
        assert r["horizon_1e-6"] == pytest.approx(math.log(1e6) / r["decay_rate"])


@pytest.mark.slow
def test_forget_bias_sweep_follows_theory(study):
    rows = study[1]["forget_bias_sweep"]["rows"]
    assert [r["forget_bias"] for r in rows] == [0.0, 3.0]
    for r in rows:
        assert r["theory_log_sigma"] == pytest.approx(math.log(1 / (1 + math.exp(-r["forget_bias"]))))
    # a larger forget bias slows the decay along the carousel, as log sigma(b) says
    assert rows[1]["cell_path_top"] > rows[0]["cell_path_top"]
    assert rows[1]["lyapunov_top"] > rows[0]["lyapunov_top"]


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["flow", "--cells", "lstm,lsmt", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cell='lsmt' is not a registered cell; valid cells:" in err
    assert main(["flow", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "steps=0 is invalid" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_a_short_study_derives_its_warmup(tmp_path, capsys):
    from lstmlab.analysis.study import FlowConfig

    assert [FlowConfig(steps=s).warmup for s in (1, 5, 20, 200)] == [0, 2, 10, 10]
    assert FlowConfig(steps=5, warmup=4).warmup == 4
    with pytest.raises(ValueError, match=r"warmup=5 is invalid; allowed: 0 <= warmup < steps=5"):
        FlowConfig(steps=5, warmup=5)
    assert main(["flow", "--cells", "lstm,rnn-tanh", "--steps", "5", "--hidden", "4", "--batch", "2",
                 "--forget-bias-sweep", "", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "flow.json").read_text())
    assert res["config"]["warmup"] == 2 and len(res["cells"]["lstm"]["grad_by_lag"]) == 5
    assert "warmup" not in capsys.readouterr().err
