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
    rc = main(
        [
            "flow",
            "--cells",
            CELLS,
            "--steps",
            "40",
            "--hidden",
            "8",
            "--batch",
            "3",
            "--heatmap-stride",
            "4",
            "--forget-bias-sweep",
            "0,3,8",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out, json.loads((out / "flow.json").read_text())


@pytest.mark.slow
def test_files_written(study):
    out, res = study
    for name in [
        "flow.json",
        "report.html",
        "gradient_by_lag.png",
        "lag_heatmaps.png",
        "lyapunov.png",
        "cell_path.png",
        "theory.png",
    ]:
        data = (out / name).read_bytes()
        assert len(data) > 500, name
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    html = (out / "report.html").read_text()
    for cell in CELLS.split(","):
        assert f"<b>{cell}</b>" in html
    assert res["config"]["steps"] == 40
    assert list(res["cells"]) == CELLS.split(",") + ["lstm, forget bias 1", "lstm, forget bias 2"]
    assert "<b>lstm, forget bias 2</b>" in html


@pytest.mark.slow
def test_lstm1997_carries_error_without_loss(study):
    r = study[1]["cells"]["lstm1997"]
    g = r["grad_by_lag"]
    assert all(v == approx(g[1], "float64_closed_form") for v in g[1:])  # flat after the last step
    assert r["lyapunov_top"] == approx(0.0, "float64_closed_form")
    assert r["horizon_1e-6"] is None and r["horizon_empirical"] is None  # infinite / never
    assert r["lyapunov_status"] == "constant" and r["measured_status"] == "never_below_threshold"
    assert all(s == pytest.approx(1.0) for s in r["cell_path"]["share"])


@pytest.mark.slow
def test_plain_rnns_vanish_and_the_rates_agree(study):
    cells = study[1]["cells"]
    sig = cells["rnn-sigmoid"]
    assert sig["grad_by_lag"][-1] < 1e-20 and sig["horizon_empirical"] < 20
    for name in ("rnn-tanh", "rnn-sigmoid", "gru"):
        r = cells[name]
        assert r["decay_rate"] > 0
        assert r["lyapunov_status"] == "decays" and r["measured_status"] == "below_threshold"
        # the top Lyapunov exponent is the measured exponential decay rate of the gradient
        assert r["decay_rate_fit"] == approx(r["decay_rate"], "decay_fit_short")
        assert r["horizon_1e-6"] == pytest.approx(math.log(1e6) / r["decay_rate"])


@pytest.mark.slow
def test_forget_bias_sweep_follows_theory(study):
    rows = study[1]["forget_bias_sweep"]["rows"]
    assert [r["forget_bias"] for r in rows] == [0.0, 3.0, 8.0]
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
    assert (
        main(
            [
                "flow",
                "--cells",
                "lstm,rnn-tanh",
                "--steps",
                "5",
                "--hidden",
                "4",
                "--batch",
                "2",
                "--forget-bias-sweep",
                "",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "flow.json").read_text())
    assert res["config"]["warmup"] == 2 and len(res["cells"]["lstm"]["grad_by_lag"]) == 5
    assert "warmup" not in capsys.readouterr().err


def test_forget_bias_variants_and_growing_are_told_apart(study):
    cells, rows = study[1]["cells"], study[1]["forget_bias_sweep"]["rows"]
    default, b2 = cells["lstm"], cells["lstm, forget bias 2"]
    assert b2["forget_bias"] == 2.0 and b2["cell"] == "lstm" and default["forget_bias"] is None
    assert b2["lyapunov_top"] > default["lyapunov_top"]  # the forget bias lengthens the memory
    assert b2["forget_gate_mean"] > default["forget_gate_mean"]
    assert (
        "Its forget gates average " + f"{default['forget_gate_mean']:.2f}"
        in study[0].joinpath("report.html").read_text()
    )
    for r in rows:  # the status follows the sign of the top exponent; only a decay has a horizon
        assert r["lyapunov_status"] == ("growing" if r["lyapunov_top"] > 1e-9 else "decays")
        assert (r["horizon_1e-6"] is None) == (r["lyapunov_status"] == "growing")
    # with b = 8 the carousel alone still decays (log sigma(8) < 0), but the full state's
    # gradient grows: "growing", no horizon, and the report says so
    grow = rows[2]
    assert grow["cell_path_top"] < 0 < grow["lyapunov_top"] and grow["lyapunov_status"] == "growing"
    assert "b = 8 (top exponent" in study[0].joinpath("report.html").read_text()


def test_growing_is_reported_as_growing(study):
    """A gradient that grows with the lag is called growing in the table and the answer,
    not an infinite horizon (the default study's forget biases 3 and 5 do this)."""
    from lstmlab.analysis.report import conclusion, horizon_words, write_report

    res = json.loads(json.dumps(study[1]))
    b2 = res["cells"]["lstm, forget bias 2"]
    b2.update(
        lyapunov_top=0.02,
        lyapunov_status="growing",
        measured_status="growing",
        horizon_empirical=None,
        **{"horizon_1e-6": None, "horizon_e": None},
    )
    row = res["forget_bias_sweep"]["rows"][1]
    row.update(lyapunov_top=0.02, lyapunov_status="growing", **{"horizon_1e-6": None})
    assert horizon_words(b2, res["config"]).startswith("never: it grows with the lag")
    assert "at b = 3 (top exponent +0.0200) and b = 8 (top exponent" in conclusion(res)
    doc = write_report(res, [], lambda d: None)
    assert "<td>growing</td>" in doc and "&infin;</td>" not in doc.split("lstm, forget bias 2")[1].split("</tr>")[0]


def test_status_rules():
    from lstmlab.analysis.study import lyapunov_status, measured_status

    assert [lyapunov_status(v) for v in (-0.1, 0.0, 1e-12, 0.01)] == ["decays", "constant", "constant", "growing"]
    assert measured_status([1.0, 1e-3, 1e-7], 1e-6) == "below_threshold"
    assert measured_status([1.0, 0.5, 0.1], 1e-6) == "never_below_threshold"
    assert measured_status([1.0, 0.5, 0.1, 1.5], 1e-6) == "growing"


def test_the_report_answers_from_the_numbers(study):
    from lstmlab.analysis.report import conclusion, horizon_words

    res = study[1]
    text = conclusion(res)
    cells, cfg = res["cells"], res["config"]
    # every horizon quoted is the measured one, formatted from flow.json
    for name in ("rnn-tanh", "lstm", "lstm, forget bias 1"):
        assert horizon_words(cells[name], cfg) in text
    assert f"after {cells['rnn-tanh']['horizon_empirical']} steps" in text
    assert "gradient is growing" in text  # the sweep's b = 8
    changed = json.loads(json.dumps(res))
    changed["cells"]["rnn-tanh"]["horizon_empirical"] = 12345
    assert "after 12345 steps" in conclusion(changed)  # computed, not written in
    html = (study[0] / "report.html").read_text()
    assert html.index("The answer") < html.index("gradient_by_lag.png") < html.index("The numbers")
    assert "Measured share carried by the carousel" in html


@pytest.fixture(scope="module")
def modern(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_modern")
    args = ["flow", "--cells", "slstm,minlstm,mingru", "--steps", "40", "--hidden", "8", "--batch", "3"]
    assert main([*args, "--heatmap-stride", "4", "--forget-bias-sweep", "", "--out", str(out)]) == 0
    return out, json.loads((out / "flow.json").read_text())


def test_the_default_study_includes_the_modern_cells():
    from lstmlab.analysis.study import DEFAULT_CELLS, FlowConfig

    assert {"slstm", "minlstm", "mingru"} <= set(DEFAULT_CELLS) == set(FlowConfig().cells)


@pytest.mark.slow
def test_the_modern_cells_in_the_study(modern):
    out, res = modern
    cells = {k: v for k, v in res["cells"].items() if not k.startswith("lstm, forget bias")}
    assert list(cells) == ["slstm", "minlstm", "mingru"]
    for r in cells.values():
        assert r["lyapunov_status"] == "decays" and r["measured_status"] == "below_threshold"
        assert r["decay_rate_fit"] == approx(r["decay_rate"], "decay_fit_short")
        assert 0 < r["carry_mean"] < 1
    # the min cells' step Jacobians are their diagonal carries: the top Lyapunov exponent is
    # the largest mean log carry of a unit (over the steps both count, all but a few)
    for name in ("minlstm", "mingru"):
        assert cells[name]["lyapunov_top"] == approx(cells[name]["carry_log_top"], "decay_fit_short")
        assert "cell_path" not in cells[name] and "grad_c_by_lag" not in cells[name]
    s = cells["slstm"]
    assert s["state"] == ["h", "c", "n", "m"] and len(s["grad_n_by_lag"]) == 40
    assert s["heatmap"]["stride"] == 8  # twice --heatmap-stride: its state is 3H wide
    assert 0 < s["ratio_carry_mean"] < 1 and s["carry_log_top"] <= 0
    assert all(0 <= v <= 1 for v in s["cell_path"]["share"])
    html = (out / "report.html").read_text()
    assert f"f&prime; averages {s['carry_mean']:.2f} and the ratio's factor {s['ratio_carry_mean']:.2f}" in html
    for name, what in (("minlstm", "minLSTM"), ("mingru", "minGRU")):
        assert f"<b>{what}</b>'s error flows back only along h" in html
        assert f"(averaging {cells[name]['carry_mean']:.2f} here)" in html
