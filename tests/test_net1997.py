"""The 1997 machine (lstmlab.train.net1997): the paper's weight counts, the autograd
reference against the library's lstm1997 layer, the C++ engine against the reference
(gradients and updates, per sequence and per step on a stream), stop_error, the stream
state, snapshot/rollback, state_dict, determinism per seed."""

import numpy as np
import pytest
import torch

import lstmlab
from conftest import assert_close
from lstmlab.errors import ArgumentError
from lstmlab.train.net1997 import BlockNet, Init1997, Machine1997, reference_step

REBER = {"cell_bias": False, "output_bias": False}  # sec. 5.1: gates biased, outputs from cells only


@pytest.mark.parametrize(
    "net, count",
    [
        (BlockNet(2, 1, 2, 2), 93),  # adding / multiplication (experiments 4, 5)
        (BlockNet(7, 7, 4, 1, **REBER), 264),  # embedded Reber, 4 blocks of 1
        (BlockNet(7, 7, 3, 2, **REBER), 276),  # embedded Reber, 3 blocks of 2
        (BlockNet(8, 4, 2, 2), 156),  # temporal order 6a
        (BlockNet(8, 8, 3, 2), 308),  # temporal order 6b
    ],
)
def test_weight_counts_are_the_papers(net, count):
    assert net.num_weights() == count
    assert Machine1997(net, Init1997(0.1), 0, fast=False).get_weights().shape == (count,)


def test_weight_count_by_hand_with_every_option():
    # 2 blocks x 3 cells, forget gates, 2 hidden units, 3 inputs, 2 outputs, all recurrent groups
    net = BlockNet(3, 2, 2, 3, hidden_units=2, forget_gate=True, recurrent_from=("cells", "gates", "hidden"))
    units = 6 + 2 * 3 + 2
    sources = 3 + 1 + (6 + 6 + 2)
    assert net.num_weights() == units * sources + 2 * (6 + 2 + 1)
    assert BlockNet(3, 2, 2, 3, output_from_inputs=True).num_weights() == 10 * (3 + 1 + 10) + 2 * (6 + 3 + 1)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ArgumentError, match="recurrent_from"):
        BlockNet(2, 1, 2, 2, recurrent_from=("cells", "outputs"))
    with pytest.raises(ArgumentError, match="cell_input"):
        BlockNet(2, 1, 2, 2, cell_input="softsign")
    with pytest.raises(ArgumentError, match="forget gate biases"):
        Machine1997(BlockNet(2, 1, 2, 2), Init1997(0.1, forget_gate_bias=(1.0, 2.0)), 0, fast=False)
    m = Machine1997(BlockNet(2, 1, 2, 2), Init1997(0.1), 0, fast=False)
    with pytest.raises(ArgumentError, match="lengths"):
        m.predict(np.zeros((2, 5, 2)), [5, 6])
    with pytest.raises(ArgumentError, match="update"):
        m.stream(np.zeros((5, 2)), np.zeros((5, 1)), 0.1, update="sequence")


def test_init_puts_the_gate_biases_and_keeps_weights_in_range():
    net = BlockNet(2, 1, 3, 2, forget_gate=True)
    init = Init1997(0.2, input_gate_bias=(-1, -2, -3), output_gate_bias=(-2, -4, -6), forget_gate_bias=(1, 2, 3))
    w_hid, w_out = Machine1997(net, init, 5, fast=False).weight_matrices()
    assert w_hid[net.row("in") : net.row("in") + 3, net.inputs].tolist() == [-1, -2, -3]
    assert w_hid[net.row("out") : net.row("out") + 3, net.inputs].tolist() == [-2, -4, -6]
    assert w_hid[net.row("forget") : net.row("forget") + 3, net.inputs].tolist() == [1, 2, 3]
    others = np.ones_like(w_hid, dtype=bool)
    others[net.cells : net.row("hidden"), net.inputs] = False
    assert np.abs(w_hid[others]).max() <= 0.2 and np.abs(w_out).max() <= 0.2
    assert np.abs(w_hid[others]).max() > 0.1  # drawn, not zero


def _lstm1997_layer_and_readout(net, machine):
    """lstmlab.Recurrent(cell="lstm1997", truncate=True) and a Linear with the machine's weights."""
    w_hid, w_out = (torch.from_numpy(w) for w in machine.weight_matrices())
    I, C = net.inputs, net.cells
    layer = lstmlab.Recurrent(I, C, cell="lstm1997", truncate=True, dtype=torch.float64, backend="reference")
    rows = {"i": net.row("in"), "g": net.row("cell"), "o": net.row("out")}
    with torch.no_grad():
        for k, name in enumerate(("i", "g", "o")):  # lstm1997's gate order
            block = w_hid[rows[name] : rows[name] + C]
            layer.weight_ih_l0[k * C : (k + 1) * C] = block[:, :I]
            layer.bias_ih_l0[k * C : (k + 1) * C] = block[:, I]
            layer.bias_hh_l0[k * C : (k + 1) * C] = 0
            layer.weight_hh_l0[k * C : (k + 1) * C] = block[:, I + 1 :]
    readout = torch.nn.Linear(C, net.outputs, dtype=torch.float64)
    with torch.no_grad():
        readout.weight.copy_(w_out[:, :C])
        readout.bias.copy_(w_out[:, -1])
    return layer, readout


def test_reference_is_the_librarys_truncated_lstm1997_layer_with_a_sigmoid_readout():
    # one cell per block, recurrence from the cell outputs only: exactly an lstm1997 layer
    net = BlockNet(3, 2, 4, 1, recurrent_from=("cells",))
    machine = Machine1997(net, Init1997(0.8, input_gate_bias=(-1, -2, -0.5, 0.3)), 3, fast=False)
    layer, readout = _lstm1997_layer_and_readout(net, machine)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    targets = torch.rand(12, 2, generator=g, dtype=torch.float64)
    targets[::3] = float("nan")
    known = ~torch.isnan(targets)

    y = torch.sigmoid(readout(layer(x[:, None])[0][:, 0]))  # (T, K)
    loss = 0.5 * ((y - targets)[known] ** 2).sum()
    loss.backward()
    assert_close(torch.from_numpy(machine.predict(x[None].numpy(), [12])[0]), y.detach())

    grad = dict(zip(("hid", "out"), _matrices(net, machine.gradient(x.numpy(), targets.numpy()))))
    I, C = net.inputs, net.cells
    rows = {"i": net.row("in"), "g": net.row("cell"), "o": net.row("out")}
    for k, name in enumerate(("i", "g", "o")):
        block = grad["hid"][rows[name] : rows[name] + C]
        assert_close(block[:, :I], layer.weight_ih_l0.grad[k * C : (k + 1) * C], msg=name)
        assert_close(block[:, I], layer.bias_ih_l0.grad[k * C : (k + 1) * C], msg=name)
        assert_close(block[:, I + 1 :], layer.weight_hh_l0.grad[k * C : (k + 1) * C], msg=name)
    assert_close(grad["out"][:, :C], readout.weight.grad)
    assert_close(grad["out"][:, -1], readout.bias.grad)


def _matrices(net, flat):
    """A flat weight (or gradient) vector back into (W_hid, W_out) tensors, zeros where masked."""
    masks = [m.astype(bool) for m in net.masks()]
    out, n = [], 0
    for m in masks:
        w = np.zeros(m.shape)
        w[m] = flat[n : n + m.sum()]
        n += m.sum()
        out.append(torch.from_numpy(w))
    return out


def test_reference_gradient_is_autograd_of_the_loss_with_the_recurrent_sources_detached():
    # independent of the engine's loop: finite differences cannot see the truncation, so
    # differentiate a plain loop over reference_step whose t-1 sources are detached by hand
    net = BlockNet(2, 2, 2, 2, forget_gate=True, hidden_units=1, recurrent_from=("cells", "gates", "hidden"))
    machine = Machine1997(net, Init1997(0.5), 1, fast=False)
    w_hid, w_out = (torch.from_numpy(w).requires_grad_() for w in machine.weight_matrices())
    m_hid, m_out = (torch.from_numpy(m) for m in net.masks())
    rng = np.random.default_rng(2)
    x, t = rng.normal(size=(9, 2)), rng.uniform(size=(9, 2))
    s, r, loss = torch.zeros(net.cells, dtype=torch.float64), torch.zeros(net.recurrent, dtype=torch.float64), 0
    for k in range(9):
        out = reference_step(net, w_hid * m_hid, w_out * m_out, torch.from_numpy(x[k]), s, r.detach())
        s, r = out.s, out.r
        loss = loss + 0.5 * ((out.y - torch.from_numpy(t[k])) ** 2).sum()
    loss.backward()
    expected = np.concatenate([w_hid.grad.numpy()[m_hid.bool().numpy()], w_out.grad.numpy()[m_out.bool().numpy()]])
    assert_close(torch.from_numpy(machine.gradient(x, t)), torch.from_numpy(expected))
