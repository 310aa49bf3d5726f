"""The modern cells (issue #13): slstm (Beck et al. 2024, xLSTM), minlstm and mingru (Feng et
al. 2024, "Were RNNs All We Needed?"). The reference step against float64 implementations of
the papers' equations written out here (sLSTM also in its unstabilised form), gradcheck of
whole layers, the stabiliser's invariance, heads as a block-diagonal matrix, the layer's
options, parameter names and state_dicts, padding, and the gradient flow of the min cells
(the other instruments: test_modern_instruments.py)."""

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmlab
from conftest import assert_close, gradcheck
from lstmlab.analysis import gradient_flow, record
from lstmlab.backends import reference
from lstmlab.cells import ACTIVATIONS

DT = torch.float64
I, H = 3, 4
MODERN = ["slstm", "minlstm", "mingru"]


def layer(cell, seed=0, **kw):
    torch.manual_seed(seed)
    return lstmlab.Recurrent(I, H, cell=cell, dtype=DT, backend="reference", **kw)


# ---- the papers' equations, written out independently of lstmlab ---------------------
def sig(v):
    return 1 / (1 + torch.exp(-v))


def g_paper(v):
    """Feng et al.'s g: x + 1/2 for x >= 0, sigma(x) otherwise."""
    return torch.where(v >= 0, v + 0.5, sig(v))


def paper_min(kind, W, b, x, h, act=g_paper):
    """minGRU / minLSTM over x (T, B, I) from h (B, H); returns the outputs (T, B, H)."""
    outs = []
    for t in range(x.shape[0]):
        k = x[t] @ W.t() + b
        if kind == "mingru":
            kz, kh = k.split(H, -1)
            z = sig(kz)
            h = (1 - z) * h + z * act(kh)
        else:
            kf, ki, kh = k.split(H, -1)
            f, i = sig(kf), sig(ki)
            h = f / (f + i) * h + i / (f + i) * act(kh)
        outs.append(h)
    return torch.stack(outs)


def full_recurrent(weight_hh, heads):
    """slstm's compressed (4H, H/heads) weight_hh as the (4H, H) block-diagonal matrix."""
    dh = H // heads
    return torch.cat(
        [torch.block_diag(*weight_hh[g * H : (g + 1) * H].split(dh)) for g in range(4)]
    )  # rows of head d: its (dh, dh) block at columns d*dh


def paper_slstm(p, x, state, heads=1, forget="sigmoid", stabilised=True, detach=True):
    """sLSTM (Beck et al. 2024, eqs. of the sLSTM cell) over x (T, B, I) from state (h, c, n, m);
    unstabilised: c~_t = f c~ + i z, n~_t = f n~ + i, h = o c~ / n~ with i = exp(k_i), the
    state's m then unused. Returns outputs (T, B, H) and the final state."""
    R = full_recurrent(p.weight_hh, heads)
    h, c, n, m = state
    outs = []
    for t in range(x.shape[0]):
        k = x[t] @ p.weight_ih.t() + p.bias_ih + h @ R.t() + p.bias_hh
        ki, kf, kz, ko = k.split(H, -1)
        z, o = torch.tanh(kz), sig(ko)
        log_f = -torch.log1p(torch.exp(-kf)) if forget == "sigmoid" else kf
        if stabilised:
            m_new = torch.maximum(log_f + m, ki)
            if detach:
                m_new = m_new.detach()
            i, f = torch.exp(ki - m_new), torch.exp(log_f + m - m_new)
            m = m_new
        else:
            i, f = torch.exp(ki), torch.exp(log_f)
        c = f * c + i * z
        n = f * n + i
        h = o * c / n
        outs.append(h)
    return torch.stack(outs), (h, c, n, m)


def default_state(B):
    zero = torch.zeros(B, H, dtype=DT)
    return zero, zero, zero, torch.full((B, H), -math.inf, dtype=DT)


# ---- the reference step against the papers ------------------------------------------
@pytest.mark.parametrize("kind", ["minlstm", "mingru"])
@pytest.mark.parametrize("activation", ["g_min", "identity"])
def test_min_cells_are_feng_et_al(kind, activation):
    m = layer(kind, activation=activation)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(9, 5, I, generator=g, dtype=DT)
    h0 = torch.randn(1, 5, H, generator=g, dtype=DT)
    out, h_n = m(x, h0)
    act = g_paper if activation == "g_min" else (lambda v: v)
    want = paper_min(kind, m.weight_ih_l0, m.bias_ih_l0, x, h0[0], act)
    assert_close(out, want)
    assert_close(h_n[0], want[-1])


def test_g_min_is_feng_et_als_g():
    x = torch.tensor([-30.0, -2.0, -1e-3, 0.0, 1e-3, 2.0, 30.0], dtype=DT)
    assert_close(ACTIVATIONS["g_min"].fn(x), g_paper(x), tol="exact")
    assert ACTIVATIONS["g_min"].fn(torch.tensor(0.0, dtype=DT)) == 0.5  # continuous at 0: sigma(0) = 0 + 1/2


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_slstm_is_beck_et_al_stabilised_and_unstabilised(heads, forget):
    m = layer("slstm", heads=heads, forget_activation=forget)
    with torch.no_grad():  # moderate pre-activations: the unstabilised form neither overflows nor underflows
        for w in m.parameters():
            w.mul_(0.5)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 3, I, generator=g, dtype=DT)
    out, (h_n, c_n, n_n, m_n) = m(x)
    p = m.cell_params(0)
    want, (h, c, n, mm) = paper_slstm(p, x, default_state(3), heads, forget)
    assert_close(out, want)
    for a, b in [(h_n[0], h), (c_n[0], c), (n_n[0], n), (m_n[0], mm)]:
        assert_close(a, b)
    plain, (_, c_plain, n_plain, _) = paper_slstm(p, x, default_state(3), heads, forget, stabilised=False)
    assert_close(out, plain)
    # the stabilised c and n are the paper's c~ and n~ rescaled by exp(-m)
    assert_close(c_n[0] * torch.exp(m_n[0]), c_plain)
    assert_close(n_n[0] * torch.exp(m_n[0]), n_plain)


def test_slstm_first_step_ignores_c0_and_n0():
    """m_0 = -inf: m_1 = log i_1, f'_1 = 0, i'_1 = 1, so c_1 = z_1 and n_1 = 1."""
    m = layer("slstm")
    x = torch.randn(1, 2, I, dtype=DT)
    h0 = torch.randn(1, 2, H, dtype=DT)
    ones = torch.ones(1, 2, H, dtype=DT)
    _, (_, c1, n1, m1) = m(x, (h0, 5 * ones, 7 * ones, torch.full_like(ones, -math.inf)))
    tr = {}
    p = m.cell_params(0)
    reference.pointwise(m.spec, p, reference.input_projection(p, x[0]), (h0[0], *default_state(2)[1:]), False, tr)
    assert_close(c1[0], tr["z"], tol="exact")
    assert torch.equal(n1[0], torch.ones(2, H, dtype=DT))
    assert_close(m1[0], tr["pre"]["i"], tol="exact")


def test_zero_state_has_m_at_minus_infinity():
    z = reference.zero_state(lstmlab.get_cell("slstm"), 2, H, torch.empty(0, dtype=DT))
    assert [t.shape for t in z] == [(2, H)] * 4
    assert all(torch.equal(t, torch.zeros(2, H, dtype=DT)) for t in z[:3])
    assert torch.equal(z[3], torch.full((2, H), -math.inf, dtype=DT))


# ---- gradients -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cell,options", [("slstm", {"heads": 2}), ("slstm", {"forget_activation": "exp"}), ("minlstm", {}), ("mingru", {})]
)
def test_layer_gradcheck_bidirectional_two_layers_with_lengths(cell, options):
    """Output and h_n of a packed, bidirectional, 2-layer layer as functions of the input and
    every weight (slstm's c_n, n_n, m_n are stabilised internals: not part of the check)."""
    m = lstmlab.Recurrent(2, H, 2, bidirectional=True, cell=cell, dtype=DT, backend="reference", **options)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 2, generator=g, dtype=DT, requires_grad=True)
    lengths = torch.tensor([4, 2, 3])
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ws):
        out, state = torch.func.functional_call(
            m, dict(zip(names, ws)), (pack_padded_sequence(x, lengths, enforce_sorted=False),)
        )
        return out.data, state[0] if isinstance(state, tuple) else state

    assert gradcheck(f, (x, *(w.detach().requires_grad_() for w in m.parameters())))


def test_slstm_stabiliser_invariance_of_outputs_and_gradients():
    """Shifting m_0 by s and rescaling c_0, n_0 by exp(-s) is the same cell state: outputs,
    h_n, the unstabilised c~, n~ and every gradient (x, h_0, weights) are unchanged."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3, I, generator=g, dtype=DT)
    h0 = torch.randn(2, 3, H, generator=g, dtype=DT)
    c0 = torch.randn(2, 3, H, generator=g, dtype=DT)
    n0 = torch.rand(2, 3, H, generator=g, dtype=DT) + 0.5
    m0 = torch.randn(2, 3, H, generator=g, dtype=DT)
    s = 6 * torch.rand(2, 3, H, generator=g, dtype=DT) - 3
    u = torch.randn(7, 3, 2 * H, generator=g, dtype=DT)
    results = []
    for c_init, n_init, m_init in [(c0, n0, m0), (c0 * torch.exp(-s), n0 * torch.exp(-s), m0 + s)]:
        m = layer("slstm", bidirectional=True, heads=2)
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, (h_n, c_n, n_n, m_n) = m(xi, (hi, c_init, n_init, m_init))
        loss = (out * u).sum() + h_n.pow(2).sum()
        grads = torch.autograd.grad(loss, [xi, hi, *m.parameters()])
        results.append([out, h_n, c_n * torch.exp(m_n), n_n * torch.exp(m_n), *grads])
    for k, (a, b) in enumerate(zip(*results, strict=True)):
        assert_close(a, b, msg=f"entry {k}")


@pytest.mark.parametrize("heads", [1, 2])
def test_slstm_gradients_are_those_of_the_undetached_stabiliser(heads):
    """The reference detaches m; differentiating through m as well (the paper's equations
    with m a function of the weights) gives the same gradients: h does not depend on m."""
    m = layer("slstm", heads=heads)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 2, I, generator=g, dtype=DT, requires_grad=True)
    u = torch.randn(8, 2, H, generator=g, dtype=DT)
    out, _ = m(x)
    params = list(m.parameters())
    got = torch.autograd.grad((out * u).sum(), [x, *params])
    want_out, _ = paper_slstm(m.cell_params(0), x, default_state(2), heads, detach=False)
    want = torch.autograd.grad((want_out * u).sum(), [x, *params])
    for name, a, b in zip(["x"] + [n for n, _ in m.named_parameters()], got, want, strict=True):
        assert_close(a, b, msg=name)


def test_heads_are_a_block_diagonal_recurrent_matrix():
    """heads=2 equals heads=1 with the full weight_hh zero off the blocks; the compressed
    gradient is the full one's blocks."""
    blocks = layer("slstm", heads=2)
    full = layer("slstm")
    with torch.no_grad():
        for (n, w), (n2, w2) in zip(blocks.named_parameters(), full.named_parameters(), strict=True):
            assert n == n2
            w2.copy_(full_recurrent(w, 2) if n == "weight_hh_l0" else w)
    R = full_recurrent(blocks.weight_hh_l0.detach(), 2)
    assert int((R != 0).sum()) == 4 * H * (H // 2)  # zero off the two blocks of each gate
    x = torch.randn(6, 3, I, dtype=DT)
    out_b, _ = blocks(x)
    out_f, _ = full(x)
    assert_close(out_b, out_f)
    out_b.sum().backward()
    out_f.sum().backward()
    assert_close(full_recurrent(blocks.weight_hh_l0.grad, 2), full.weight_hh_l0.grad * (R != 0))


# ---- the layer: names, state_dict, options, padding ------------------------------------
def test_parameter_names_and_shapes():
    m = lstmlab.Recurrent(I, 8, 2, bidirectional=True, cell="slstm", heads=4)
    want = []
    for k, inp in [(0, I), (1, 16)]:
        for sfx in ("", "_reverse"):
            want += [
                (f"weight_ih_l{k}{sfx}", (32, inp)),
                (f"weight_hh_l{k}{sfx}", (32, 2)),
                (f"bias_ih_l{k}{sfx}", (32,)),
                (f"bias_hh_l{k}{sfx}", (32,)),
            ]
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == want
    for cell, G in [("minlstm", 3), ("mingru", 2)]:
        m = lstmlab.Recurrent(I, 8, cell=cell)
        assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == [
            ("weight_ih_l0", (8 * G, I)),
            ("bias_ih_l0", (8 * G,)),
        ]
        assert m.cell_params(0).weight_hh is None and m.cell_params(0).bias_hh is None
        m = lstmlab.Recurrent(I, 8, bias=False, cell=cell)
        assert [n for n, _ in m.named_parameters()] == ["weight_ih_l0"]
        assert [n for n, _ in lstmlab.RecurrentCell(I, 8, cell=cell).named_parameters()] == ["weight_ih", "bias_ih"]


@pytest.mark.parametrize("cell", MODERN)
def test_state_dict_round_trip_and_init_bounds(cell):
    a = layer(cell, seed=1, num_layers=2, bidirectional=True)
    bound = 1 / math.sqrt(H)
    assert all(float(w.detach().abs().max()) <= bound for w in a.parameters())  # torch's U(-1/sqrt(H), 1/sqrt(H))
    b = layer(cell, seed=2, num_layers=2, bidirectional=True)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(5, 2, I, dtype=DT)
    for s, t in zip(a(x), b(x)):
        for u, v in zip(s if isinstance(s, tuple) else (s,), t if isinstance(t, tuple) else (t,)):
            assert_close(u, v, tol="exact")
    with pytest.raises(RuntimeError, match="weight_hh_l0"):  # a cell with recurrent weights does not load
        layer("lstm", num_layers=2, bidirectional=True).load_state_dict(layer("mingru").state_dict())


@pytest.mark.parametrize("cell", MODERN)
def test_padding_is_zero_and_the_state_is_held(cell):
    """Packed, bidirectional, batch_first: each sequence as if run alone at its length."""
    m = layer(cell, num_layers=2, bidirectional=True, batch_first=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 6, I, generator=g, dtype=DT)
    lengths = torch.tensor([6, 2, 4])
    out, state = m(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    out, got_lengths = pad_packed_sequence(out, batch_first=True)
    state = state if isinstance(state, tuple) else (state,)
    for b, L in enumerate(lengths.tolist()):
        alone, s_alone = m(x[b : b + 1, :L])
        s_alone = s_alone if isinstance(s_alone, tuple) else (s_alone,)
        assert_close(out[b, :L], alone[0])
        assert not out[b, L:].any()
        for a, c in zip(state, s_alone, strict=True):
            assert_close(a[:, b], c[:, 0])
    # the reference loop itself: past its length a row's state is held, its output 0
    p, spec = m.cell_params(0), m.spec
    xt = x.transpose(0, 1)
    out0, final, _ = reference.run_layer(spec, p, xt, reference.zero_state(spec, 3, H, xt), lengths)
    for b, L in enumerate(lengths.tolist()):
        _, held, _ = reference.run_layer(spec, p, xt[:L, b : b + 1], reference.zero_state(spec, 1, H, xt))
        for a, c in zip(final, held, strict=True):
            assert_close(a[b : b + 1], c)
        assert not out0[L:, b].any()


def test_forget_and_input_bias_go_where_the_gates_are():
    m = layer("slstm", forget_bias=3.0, input_bias=-2.0)  # gates i f z o
    assert torch.equal(m.bias_ih_l0[:H], torch.full((H,), -2.0, dtype=DT))
    assert torch.equal(m.bias_ih_l0[H : 2 * H], torch.full((H,), 3.0, dtype=DT))
    assert torch.equal(m.bias_hh_l0[: 2 * H], torch.zeros(2 * H, dtype=DT))
    m = layer("minlstm", forget_bias=1.5, input_bias=-0.5)  # gates f i h, no bias_hh
    assert torch.equal(m.bias_ih_l0[: 2 * H], torch.tensor([1.5] * H + [-0.5] * H, dtype=DT))


def test_learn_init_learns_h_only_for_slstm():
    m = layer("slstm", learn_init=True, num_layers=2)
    assert [n for n, _ in m.named_parameters() if n.startswith("initial_")] == ["initial_h"]
    with torch.no_grad():
        m.initial_h.normal_()
    x = torch.randn(5, 2, I, dtype=DT)
    out, _ = m(x)
    h0 = m.initial_h.detach().unsqueeze(1).expand(-1, 2, -1)
    zero, _, _, minf = default_state(2)
    expand = lambda t: t.unsqueeze(0).expand(2, -1, -1)
    want, _ = m(x, (h0, expand(zero), expand(zero), expand(minf)))
    assert_close(out, want, tol="exact")
    out.sum().backward()
    assert m.initial_h.grad.abs().sum() > 0
    assert [n for n, _ in layer("mingru", learn_init=True).named_parameters()][-1] == "initial_h"


@pytest.mark.parametrize(
    "cell,kw,match",
    [
        (
            "slstm",
            {"heads": 3},
            r"heads=3 does not divide hidden_size=4; allowed: a divisor of hidden_size \(1, 2, 4\)",
        ),
        ("slstm", {"heads": 0}, r"heads=0 is not allowed; allowed: an int >= 1"),
        ("slstm", {"heads": True}, r"heads=True is not allowed"),
        (
            "slstm",
            {"forget_activation": "relu"},
            r"forget_activation='relu' is not allowed; allowed: 'sigmoid' or 'exp'",
        ),
        (
            "slstm",
            {"peepholes": True},
            r"has no option 'peepholes'; options for a slstm cell: \['heads', 'forget_activation'\]",
        ),
        ("slstm", {"proj_size": 2}, r"has no option 'proj_size' \(given 2\)"),
        ("slstm", {"truncate": True}, r"has no option 'truncate'"),
        ("slstm", {"return_cell_states": True}, r"has no option 'return_cell_states'"),
        ("minlstm", {"activation": "tanh"}, r"activation='tanh' is not allowed; allowed: 'g_min' or 'identity'"),
        ("minlstm", {"heads": 2}, r"cell 'minlstm' has no option 'heads'"),
        (
            "mingru",
            {"forget_bias": 1.0},
            r"cell 'mingru' has no option 'forget_bias' \(given 1.0\): it has no forget gate",
        ),
        ("mingru", {"input_bias": 1.0}, r"it has no input gate"),
        ("mingru", {"proj_size": 1}, r"has no option 'proj_size'"),
        ("lstm", {"heads": 2}, r"cell 'lstm' has no option 'heads'"),
    ],
)
def test_bad_options_are_refused(cell, kw, match):
    with pytest.raises(lstmlab.ArgumentError, match=match):
        lstmlab.Recurrent(I, H, cell=cell, **kw)


def test_a_spec_with_fields_its_kind_does_not_use_is_refused():
    with pytest.raises(
        lstmlab.ArgumentError, match=r"heads=2 is not allowed; allowed: the default \(1\) for a lstm cell"
    ):
        lstmlab.CellSpec("x", "lstm", "", heads=2)
    with pytest.raises(
        lstmlab.ArgumentError, match=r"peepholes=True is not allowed; allowed: the default \(False\) for a slstm cell"
    ):
        lstmlab.CellSpec("x", "slstm", "", peepholes=True)
    with pytest.raises(lstmlab.ArgumentError, match=r"lstmlab.LSTM takes a lstm cell"):
        lstmlab.LSTM(I, H, cell="slstm")


@pytest.mark.parametrize("cell", MODERN)
def test_spec_declares_the_layout(cell):
    spec = lstmlab.get_cell(cell)
    m = lstmlab.Recurrent(I, H, cell=cell, bias=False)
    assert {n.removesuffix("_l0"): tuple(p.shape) for n, p in m.named_parameters()} == spec.param_shapes(I, H, False)
    assert spec.num_parameters(I, H) == sum(p.numel() for p in lstmlab.Recurrent(I, H, cell=cell).parameters())


# ---- the instruments ---------------------------------------------------------------------
@pytest.mark.parametrize("cell,carry", [("mingru", lambda tr: 1 - tr["z"]), ("minlstm", lambda tr: tr["f"])])
def test_gradient_flow_of_the_min_cells_is_the_product_of_their_carries(cell, carry):
    """dh_t/dh_{t-1} = diag(1 - z_t) (mingru), diag(f'_t) (minlstm): the gradient of
    (h_T * u).sum() reaching h_t is u times the product of the later steps' carries."""
    m = layer(cell)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 2, I, generator=g, dtype=DT)
    u = torch.randn(H, generator=g, dtype=DT)
    flow = gradient_flow(m, x, lambda out: (out[-1] * u).sum())
    assert flow.c is None
    a = carry(record(m, x).trace)  # (T, B, H)
    want = torch.stack([(u * a[t + 1 :].prod(0)).norm(dim=-1) for t in range(6)])
    assert_close(flow.h, want)
