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
from lstmlab.train.net1997 import BlockNet, Init1997, Machine1997, fast_available
from lstmlab.train.net1997_reference import reference_step

REBER = {"cell_bias": False, "output_bias": False}  # sec. 5.1: gates biased, outputs from cells only


@pytest.mark.parametrize(
    "net, count",
    [
        (BlockNet(2, 1, 2, 2), 93),  # adding / multiplication (experiments 4, 5)
        (BlockNet(7, 7, 4, 1, **REBER), 264),  # embedded Reber, 4 blocks of 1
        (BlockNet(7, 7, 3, 2, **REBER), 276),  # embedded Reber, 3 blocks of 2
        (BlockNet(8, 4, 2, 2), 156),  # temporal order 6a
        (BlockNet(8, 8, 3, 2), 308),  # temporal order 6b
        # lag 2a, p = 100: one cell and its input gate seeing the 101 inputs only (no bias, no
        # recurrence), outputs seeing the cell and the inputs, no output gate, no biases
        (
            BlockNet(
                101,
                101,
                1,
                1,
                output_gate=False,
                recurrent_from=(),
                cell_bias=False,
                gate_bias=False,
                output_bias=False,
                output_from_inputs=True,
            ),
            10_504,
        ),
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


# -- the C++ engine against the reference -----------------------------------------------

NETS = {
    "adding-2x2": BlockNet(2, 1, 2, 2),
    "reber-3x2": BlockNet(7, 7, 3, 2, **REBER),
    "forget-hidden-direct": BlockNet(
        3,
        2,
        2,
        3,
        hidden_units=2,
        forget_gate=True,
        recurrent_from=("cells", "gates", "hidden"),
        output_from_inputs=True,
    ),
    "no-gates-tanh-linear": BlockNet(
        2,
        2,
        3,
        1,
        input_gate=False,
        output_gate=False,
        cell_input="tanh",
        cell_output="identity",
        output_activation="identity",
        recurrent_from=("cells",),
    ),
    "forget-sigmoid-gates-only": BlockNet(
        2, 3, 2, 2, forget_gate=True, cell_input="sigmoid", cell_output="tanh", recurrent_from=("gates",)
    ),
    "relu-cells-tanh-out": BlockNet(2, 1, 1, 3, cell_input="relu", cell_output="relu", output_activation="tanh"),
    # wide one-hot inputs (see _data): the lag nets of 2a (outputs see the inputs) and 2c
    "one-hot-lag-2a": BlockNet(
        40,
        40,
        1,
        1,
        output_gate=False,
        recurrent_from=(),
        cell_bias=False,
        gate_bias=False,
        output_bias=False,
        output_from_inputs=True,
        cell_input="sigmoid",
        cell_output="identity",
    ),
    "one-hot-lag-2c": BlockNet(44, 2, 2, 1, cell_bias=False, gate_bias=False, output_bias=False),
    "one-hot-forget-direct": BlockNet(50, 3, 2, 1, forget_gate=True, output_from_inputs=True),
}
INIT = Init1997(0.7, input_gate_bias=(), output_gate_bias=())


def _pair(net, seed=0):
    return Machine1997(net, INIT, seed, fast=True), Machine1997(net, INIT, seed, fast=False)


def _data(net, n, T, seed, every=3):
    """Random sequences: normal inputs, or one-hot ones for wide input layers (the engine's
    sparse path: a z with few nonzeros)."""
    rng = np.random.default_rng(seed)
    if net.inputs >= 20:
        xs = np.eye(net.inputs)[rng.integers(0, net.inputs, size=(n, T))]
    else:
        xs = rng.normal(size=(n, T, net.inputs))
    targets = rng.uniform(size=(n, T, net.outputs))
    targets[:, ::every] = np.nan  # steps without targets
    lengths = rng.integers(T // 2, T + 1, size=n)
    return xs, lengths, targets


def _close(actual, expected, msg=""):
    """Equal within the float64 tolerance, NaN where the other is NaN (outputs after a length)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), msg
    a, e = (torch.from_numpy(np.nan_to_num(v, nan=0.0)) for v in (actual, expected))
    assert_close(a, e, msg=msg, dtype=torch.float64)


@pytest.mark.parametrize("name", NETS)
def test_fast_gradient_equals_the_reference(name):
    net = NETS[name]
    fast, ref = _pair(net)
    assert fast.backend == "cpp" and ref.backend == "reference"
    xs, _, targets = _data(net, 2, 15, seed=1)
    for x, t in zip(xs, targets):
        g = ref.gradient(x, t)
        assert np.abs(g).max() > 1e-3  # a real gradient, not zeros on both sides
        _close(fast.gradient(x, t), g, name)


@pytest.mark.parametrize("name", NETS)
def test_fast_online_training_equals_the_reference(name):
    # one update per sequence: errors before each update, outputs, the weights after
    net = NETS[name]
    fast, ref = _pair(net, seed=4)
    xs, lengths, targets = _data(net, 5, 12, seed=2)
    a = fast.train_sequences(xs, lengths, targets, lr=0.3, return_outputs=True)
    b = ref.train_sequences(xs, lengths, targets, lr=0.3, return_outputs=True)
    for key in ("max_abs_error", "sq_error", "outputs"):
        _close(a[key], b[key], key)
    assert np.isnan(a["outputs"][np.arange(12)[None] >= lengths[:, None]]).all()
    _close(fast.get_weights(), ref.get_weights(), "weights")
    assert np.abs(fast.get_weights() - Machine1997(net, INIT, 4).get_weights()).max() > 1e-3  # it learned
    _close(fast.predict(xs, lengths), ref.predict(xs, lengths), "predict")


def test_fast_none_takes_the_cpp_engine_when_the_tree_has_it():
    net = NETS["adding-2x2"]
    m = Machine1997(net, INIT, 0, fast=None)
    assert m.backend == ("cpp" if fast_available() else "reference")
    np.testing.assert_array_equal(m.get_weights(), Machine1997(net, INIT, 0, fast=False).get_weights())


def test_errors_are_measured_before_the_update():
    net = NETS["adding-2x2"]
    m = Machine1997(net, INIT, 0)
    xs, lengths, targets = _data(net, 1, 10, seed=3)
    before = m.predict(xs, lengths)
    known = ~np.isnan(targets[0, : lengths[0]])
    e = (before[0, : lengths[0]] - targets[0, : lengths[0]])[known]
    r = m.train_sequences(xs, lengths, targets, lr=1.0)
    _close(r["sq_error"], [0.5 * (e**2).sum()])
    _close(r["max_abs_error"], [np.abs(e).max()])
    assert not np.allclose(m.predict(xs, lengths), before)


@pytest.mark.parametrize("update", ["step", "end"])
@pytest.mark.parametrize(
    "name", ["adding-2x2", "forget-hidden-direct", "forget-sigmoid-gates-only", "one-hot-forget-direct"]
)
def test_fast_stream_equals_the_reference(name, update):
    # a continual stream over three calls: outputs, cell states and weights after each
    net = NETS[name]
    fast, ref = _pair(net, seed=5)
    xs, _, targets = _data(net, 3, 10, seed=6)
    for x, t in zip(xs, targets):
        a = fast.stream(x, t, lr=0.2, update=update)
        b = ref.stream(x, t, lr=0.2, update=update)
        assert a[2] == b[2] == 10
        _close(a[0], b[0], "outputs")
        _close(a[1], b[1], "cell states")
        _close(fast.get_weights(), ref.get_weights(), "weights")


def test_stream_state_carries_over_between_calls_until_reset():
    net = NETS["forget-hidden-direct"]
    one, two = Machine1997(net, INIT, 7), Machine1997(net, INIT, 7)
    xs, _, targets = _data(net, 1, 20, seed=8)
    x, t = xs[0], targets[0]
    whole = one.stream(x, t, lr=0.1)
    first, second = two.stream(x[:8], t[:8], lr=0.1), two.stream(x[8:], t[8:], lr=0.1)
    _close(np.concatenate([first[0], second[0]]), whole[0])
    _close(np.concatenate([first[1], second[1]]), whole[1])
    _close(two.get_weights(), one.get_weights())
    # reset(): the next call starts from zero state like a fresh machine with these weights
    two.reset()
    fresh = Machine1997(net, INIT, 0)
    fresh.set_weights(two.get_weights())
    _close(two.stream(x, t, lr=0.1)[0], fresh.stream(x, t, lr=0.1)[0])
    # without reset the state is not the zero state
    again = Machine1997(net, INIT, 0)
    again.set_weights(two.get_weights())
    assert not np.allclose(two.stream(x, t, lr=0.0)[0], again.stream(x, t, lr=0.0)[0])


@pytest.mark.parametrize("fast", [True, False])
def test_stream_stops_after_the_first_step_over_stop_error(fast):
    net = NETS["forget-sigmoid-gates-only"]
    m = Machine1997(net, INIT, 9, fast=fast)
    x = np.random.default_rng(10).normal(size=(12, net.inputs))
    y = m.stream(x, np.full((12, net.outputs), np.nan), lr=0.0, learn=False)[0]
    m.reset()
    targets = y.copy()
    targets[6, 1] = y[6, 1] + 0.75  # squared error 0.5625 at step 6, ~0 elsewhere (lr is tiny)
    w = m.get_weights()
    outputs, states, steps = m.stream(x, targets, lr=1e-3, stop_error=0.49)
    assert steps == 7 and outputs.shape == (7, net.outputs) and states.shape == (7, net.cells)
    assert not np.array_equal(m.get_weights(), w)  # the failing step's update was made
    m.set_weights(w)
    m.reset()
    assert m.stream(x, targets, lr=1e-3, stop_error=0.57)[2] == 12


def test_learn_false_leaves_the_weights():
    net = NETS["adding-2x2"]
    m = Machine1997(net, INIT, 0)
    w = m.get_weights()
    xs, _, targets = _data(net, 1, 10, seed=3)
    m.stream(xs[0], targets[0], lr=1.0, learn=False)
    assert np.array_equal(m.get_weights(), w)


@pytest.mark.parametrize("fast", [True, False])
def test_snapshot_and_rollback(fast):
    net = NETS["reber-3x2"]
    m = Machine1997(net, INIT, 11, fast=fast)
    xs, lengths, targets = _data(net, 3, 8, seed=12)
    snapshot = m.get_weights()
    first = m.train_sequences(xs, lengths, targets, lr=0.5)
    m.set_weights(snapshot)
    assert np.array_equal(m.get_weights(), snapshot)
    again = m.train_sequences(xs, lengths, targets, lr=0.5)
    assert np.array_equal(first["sq_error"], again["sq_error"])
    # the weights the net lacks (Reber: no cell or output biases) stay zero through training
    m_hid, m_out = (mask == 0 for mask in net.masks())
    w_hid, w_out = m.weight_matrices()
    assert (w_hid[m_hid] == 0).all() and (w_out[m_out] == 0).all()


def test_state_dict_round_trip(tmp_path):
    net = NETS["forget-hidden-direct"]
    m = Machine1997(net, Init1997(0.3, forget_gate_bias=(1.0, 2.0)), 13)
    xs, lengths, targets = _data(net, 2, 9, seed=14)
    m.train_sequences(xs, lengths, targets, lr=0.5)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    back = Machine1997.from_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert back.net == net and back.init == m.init and back.seed == 13
    assert np.array_equal(back.predict(xs, lengths), m.predict(xs, lengths), equal_nan=True)


def test_same_seed_same_machine_other_seed_other_weights():
    net = NETS["adding-2x2"]
    xs, lengths, targets = _data(net, 4, 10, seed=15)
    a, b = Machine1997(net, INIT, 21), Machine1997(net, INIT, 21)
    assert np.array_equal(a.get_weights(), b.get_weights())
    ra, rb = (m.train_sequences(xs, lengths, targets, lr=0.5) for m in (a, b))
    assert np.array_equal(ra["sq_error"], rb["sq_error"]) and np.array_equal(a.get_weights(), b.get_weights())
    assert not np.array_equal(Machine1997(net, INIT, 22).get_weights(), Machine1997(net, INIT, 21).get_weights())
    # the reference engine draws the same initial weights
    assert np.array_equal(
        Machine1997(net, INIT, 21, fast=False).get_weights(), Machine1997(net, INIT, 21).get_weights()
    )


def test_disconnected_outputs_see_only_the_inputs_and_the_hidden_layer_learns_nothing():
    net = NETS["forget-hidden-direct"]
    fast, ref = _pair(net, seed=16)
    fast.connected = ref.connected = False
    xs, lengths, targets = _data(net, 3, 10, seed=17)
    g = ref.gradient(xs[0], targets[0])
    _close(fast.gradient(xs[0], targets[0]), g)
    g_hid, g_out = _matrices(net, g)
    assert (g_hid == 0).all() and (g_out[:, : net.cells + net.hidden_units] == 0).all() and (g_out != 0).any()
    w_out = torch.from_numpy(fast.weight_matrices()[1])
    direct = torch.sigmoid(torch.from_numpy(xs[0]) @ w_out[:, net.cells + net.hidden_units : -1].T + w_out[:, -1])
    _close(fast.predict(xs[:1], [10])[0], direct)
    a, b = (m.train_sequences(xs, lengths, targets, lr=0.5) for m in (fast, ref))
    _close(a["sq_error"], b["sq_error"])
    _close(fast.get_weights(), ref.get_weights())
    fast.connected = ref.connected = True
    _close(fast.gradient(xs[1], targets[1]), ref.gradient(xs[1], targets[1]))
    assert (_matrices(net, fast.gradient(xs[1], targets[1]))[0] != 0).any()


def test_fast_without_the_engine_raises_the_reason(monkeypatch):
    from lstmlab.backends import csrc
    from lstmlab.train import net1997_cpp

    def no_compiler():
        raise csrc.BuildError("no C++ compiler ('c++' not on PATH) to build it")

    monkeypatch.setattr(net1997_cpp, "_module", None)
    monkeypatch.setattr(csrc, "load_net1997", no_compiler)
    with pytest.raises(csrc.BuildError, match="no C\\+\\+ compiler"):
        Machine1997(NETS["adding-2x2"], INIT, 0)
    assert Machine1997(NETS["adding-2x2"], INIT, 0, fast=False).backend == "reference"


def test_numpy_and_torch_arguments_are_accepted():
    net = NETS["adding-2x2"]
    a, b = Machine1997(net, Init1997(np.float32(0.5)), 0), Machine1997(net, Init1997(0.5), 0)
    xs, lengths, targets = _data(net, 2, 8, seed=18)
    ra = a.train_sequences(torch.from_numpy(xs), torch.from_numpy(lengths), torch.from_numpy(targets), np.float64(0.5))
    rb = b.train_sequences(xs, lengths, targets, 0.5)
    assert np.array_equal(ra["sq_error"], rb["sq_error"])
    with pytest.raises(ArgumentError, match="lr"):
        a.train_sequences(xs, lengths, targets, -1.0)


@pytest.mark.parametrize("name", ["adding-2x2", "forget-hidden-direct", "one-hot-lag-2c"])
def test_updates_after_every_step_of_each_sequence(name):
    net = NETS[name]
    fast, ref, twin = *_pair(net, seed=19), Machine1997(net, INIT, 19)
    xs, lengths, targets = _data(net, 4, 9, seed=20)
    a = fast.train_sequences(xs, lengths, targets, lr=0.3, return_outputs=True, update="step")
    b = ref.train_sequences(xs, lengths, targets, lr=0.3, return_outputs=True, update="step")
    for key in ("max_abs_error", "sq_error", "outputs"):
        _close(a[key], b[key], key)
    _close(fast.get_weights(), ref.get_weights(), "weights")
    # the same as a stream of its own per sequence
    for x, n, t in zip(xs, lengths, targets):
        twin.reset()
        twin.stream(x[:n], t[:n], lr=0.3)
    assert np.array_equal(twin.get_weights(), fast.get_weights())
    # and not the same as one update per sequence
    once = Machine1997(net, INIT, 19)
    once.train_sequences(xs, lengths, targets, lr=0.3)
    assert np.abs(once.get_weights() - fast.get_weights()).max() > 1e-6


@pytest.mark.parametrize("fast", [True, False])
def test_stream_with_a_rate_per_step_is_a_call_per_step(fast):
    net = NETS["forget-sigmoid-gates-only"]
    a, b = Machine1997(net, INIT, 23, fast=fast), Machine1997(net, INIT, 23, fast=fast)
    xs, _, targets = _data(net, 1, 12, seed=24)
    rates = 0.5 * 0.9 ** np.arange(12)
    out_a = a.stream(xs[0], targets[0], rates)[0]
    out_b = np.concatenate([b.stream(xs[0, k : k + 1], targets[0, k : k + 1], rates[k])[0] for k in range(12)])
    _close(out_a, out_b)
    _close(a.get_weights(), b.get_weights())
    with pytest.raises(ArgumentError, match="lr of shape"):
        a.stream(xs[0], targets[0], rates[:5])
    with pytest.raises(ArgumentError, match="lr of shape"):
        a.stream(xs[0], targets[0], rates, update="end")
