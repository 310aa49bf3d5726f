"""Error flow while a network learns (`train --flow-every`, lstmlab.analysis.watch): the
measurements against independent references (torch.nn and autograd), and the records
stored with the run, resumed with its checkpoint and leaving the training untouched."""

import json
import math

import pytest
import torch

from conftest import TOL, approx
from lstmlab.analysis.watch import FlowProbe
from lstmlab.layer import Recurrent
from lstmlab.train import TrainConfig, Trainer, train


def _nn_twin(rec: Recurrent, kind):
    twin = kind(rec.input_size, rec.hidden_size, batch_first=False, dtype=torch.float64)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(getattr(rec, name))
    return twin


@pytest.mark.parametrize("cell,kind", [("rnn-tanh", torch.nn.RNN), ("lstm", torch.nn.LSTM)])
def test_probe_matches_autograd_through_torch_nn(cell, kind):
    torch.manual_seed(3)
    rec = Recurrent(2, 5, cell=cell, batch_first=True)
    x = torch.randn(4, 30, 2)  # (B, T, I)
    probe = FlowProbe(x, seed=7)
    m = probe.measure(rec)
    # the same loss through torch.nn, every h_t's gradient by autograd
    twin = _nn_twin(rec, kind)
    xs = x.double().transpose(0, 1)
    h = torch.zeros(4, 5, dtype=torch.float64)
    c = torch.zeros(4, 5, dtype=torch.float64)
    hs, fs = [], []
    for t in range(30):
        h = h.detach().requires_grad_(True) if t == 0 else h
        if kind is torch.nn.RNN:
            _, h = twin(xs[t : t + 1], h.unsqueeze(0))
            h = h[0]
        else:
            gates = xs[t] @ twin.weight_ih_l0.T + twin.bias_ih_l0 + h @ twin.weight_hh_l0.T + twin.bias_hh_l0
            fs.append(torch.sigmoid(gates.chunk(4, -1)[1]).detach())
            _, (h, c) = twin(xs[t : t + 1], (h.unsqueeze(0), c.unsqueeze(0)))
            h, c = h[0], c[0]
        h.retain_grad()
        hs.append(h)
    (h * probe.u).sum().backward()
    gh = torch.stack([v.grad.norm(dim=-1) for v in hs])  # (T, B)
    if kind is torch.nn.RNN:
        expected = torch.log10(torch.exp(torch.log(gh / gh[-1]).mean(1)).flip(0))
        rtol, atol = TOL["rounded_4"]
        torch.testing.assert_close(torch.tensor(m["grad_log10"], dtype=torch.float64), expected, atol=atol, rtol=rtol)
        assert "f_hist" not in m
    else:
        f = torch.stack(fs)
        assert m["f_mean"] == approx(float(f.mean()), "rounded_6")
        counts = torch.histc(f, bins=20, min=0, max=1) / f.numel()
        assert m["f_hist"] == approx(counts.tolist(), "rounded_6")
        assert sum(m["i_hist"]) == approx(1.0, "rounded_6_sum20")
        assert all(0 <= s <= 1 for s in m["cell_share"]["share"])
    g = 10 ** torch.tensor(m["grad_log10"])
    below = torch.nonzero(g < 1e-6)
    assert m["horizon_measured"] == (int(below[0]) if len(below) else None)
    top = m["lyapunov_top"]
    assert (
        m["horizon_lyapunov"] == approx(math.log(1e6) / -top, "horizon_rounded")
        if top < 0
        else m["horizon_lyapunov"] is None
    )


CFG = dict(
    task="adding",
    task_params={"T": 22},
    cell="lstm",
    hidden_size=4,
    optimizer="adam",
    lr=0.01,
    batch_size=4,
    eval_every=40,
    eval_size=16,
    test=False,
    max_sequences=120,
    checkpoint_every=40,
)


def _records(path):
    return json.loads((path / "flow.json").read_text())["records"]


def test_flow_every_leaves_training_unchanged_and_records_each_checkpoint(tmp_path):
    plain = Trainer(TrainConfig(**CFG, out_dir=str(tmp_path / "plain")))
    plain.run()
    watched = Trainer(TrainConfig(**CFG, flow_every=40, out_dir=str(tmp_path / "watched")))
    watched.run()
    for a, b in zip(plain.model.parameters(), watched.model.parameters()):
        assert torch.equal(a, b)  # bit for bit: the probe draws from no training stream
    recs = _records(tmp_path / "watched")
    assert [r["sequences"] for r in recs] == [0, 40, 80, 120]
    assert len(recs[0]["grad_log10"]) == watched.probe.x.shape[0] >= 22 and recs[0]["lyapunov_status"] in (
        "decays",
        "growing",
        "constant",
    )
    assert not list((tmp_path / "watched").glob(".*.tmp"))
    assert not (tmp_path / "plain" / "flow.json").exists()


def test_resume_keeps_the_records_once(tmp_path):
    whole = tmp_path / "whole"
    train(TrainConfig(**CFG, flow_every=40, out_dir=str(whole)))
    part = tmp_path / "part"
    train(TrainConfig(**{**CFG, "max_sequences": 80}, flow_every=40, out_dir=str(part)))
    assert [r["sequences"] for r in _records(part)] == [0, 40, 80]
    # a record made after the checkpoint (as a killed run leaves) is dropped on resume
    data = json.loads((part / "flow.json").read_text())
    data["records"].append({**data["records"][-1], "sequences": 100})
    (part / "flow.json").write_text(json.dumps(data))
    train(TrainConfig(**CFG, flow_every=40, out_dir=str(part)), resume=True)
    a, b = _records(whole), _records(part)
    assert [r["sequences"] for r in b] == [0, 40, 80, 120]
    for ra, rb in zip(a, b):
        assert ra["grad_log10"] == rb["grad_log10"] and ra["lyapunov_top"] == rb["lyapunov_top"]


def test_flow_every_is_checked():
    with pytest.raises(ValueError, match=r"flow_every=0 is invalid; allowed: an int >= 1 or None"):
        TrainConfig(**CFG, flow_every=0)


def test_flow_report_of_two_runs_side_by_side(tmp_path, capsys):
    from lstmlab.cli import main

    runs = []
    for cell in ("lstm", "rnn-tanh"):
        out = tmp_path / cell
        train(TrainConfig(**{**CFG, "cell": cell, "max_sequences": 80}, flow_every=40, out_dir=str(out)))
        runs.append(out)
    report = tmp_path / "report"
    assert main(["flow-report", *map(str, runs), "--out", str(report)]) == 0
    for name in ("flow_horizon.png", "flow_heatmaps.png", "flow_gates.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (report / "report.html").read_text()
    assert "<b>lstm H=4</b>" in html and "<b>rnn-tanh H=4</b>" in html
    first, last = _records(runs[1])[0], _records(runs[1])[-1]  # the table quotes the run's own numbers
    row = html.split("<b>rnn-tanh H=4</b>")[1].split("</tr>")[0]
    cells = [c.split("</td>")[0] for c in row.split("<td>")[1:]]
    horizon = lambda r: f"{r['horizon_lyapunov']:.0f}" if r["lyapunov_status"] == "decays" else r["lyapunov_status"]
    assert cells[2] == "80" and cells[3:5] == [horizon(first), horizon(last)]
    assert cells[5:7] == [f"{first['lyapunov_top']:+.4f}", f"{last['lyapunov_top']:+.4f}"]
    assert main(["flow-report", str(tmp_path), "--out", str(report)]) == 2
    assert (
        "has no flow.json; allowed: the --out folder of a `lstmlab train ... --flow-every N` run"
        in capsys.readouterr().err
    )


def test_train_takes_flow_every(tmp_path, capsys):
    from lstmlab.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "adding",
                "-p",
                "T=22",
                "--hidden",
                "3",
                "--max-sequences",
                "6",
                "--eval-every",
                "6",
                "--flow-every",
                "4",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [r["sequences"] for r in _records(out)] == [0, 4, 6]
    assert f"lstmlab flow-report {out}" in capsys.readouterr().out
