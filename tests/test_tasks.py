"""Task generators against their definitions (structure, statistics, formulas recomputed
from the inputs), seed reproducibility, the registry's errors, and the layout every
task shares. The Reber grammars are in test_tasks_reber.py; judges and stopping rules in
test_tasks_judges.py."""

import math

import pytest
import torch

from conftest import approx, assert_close
from lstmlab import tasks
from lstmlab.tasks.base import LOSSES, TARGETS
from lstmlab.tasks.temporal_order import SYMBOLS as TO

ALL = [
    "adding",
    "adding-le",
    "cerg",
    "chorales",
    "copy",
    "digits",
    "lag",
    "lag-distractor",
    "lag-noisy",
    "multiplication",
    "reber",
    "temporal-order",
    "temporal-order-3",
    "two-sequence",
]
# Small parameters so that every task samples quickly.
SMALL = {
    "cerg": {"length": 60},
    "chorales": {"max_chorales": 5},
    "lag": {"p": 20},
    "lag-noisy": {"p": 20},
    "lag-distractor": {"q": 10, "p": 5},
}


def small(name, **kw):
    return tasks.make(name, **{**SMALL.get(name, {}), **kw})


def G(seed):
    return torch.Generator().manual_seed(seed)


# ---- registry and errors ---------------------------------------------------------------
def test_every_problem_is_registered():
    assert tasks.task_names() == ALL


def test_unknown_task_names_the_argument_and_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"task='adder'.*valid tasks: adding, adding-le, cerg"):
        tasks.make("adder")


@pytest.mark.parametrize(
    "name, params, pattern",
    [
        ("adding", {"T": 10}, r"T=10 is invalid; allowed: an int >= 22"),
        ("adding", {"length": 5}, r"length=5 is not a parameter of task 'adding'; allowed: T"),
        ("two-sequence", {"variant": "3d"}, r"variant='3d' is invalid; allowed: '3a', '3b', '3c'"),
        (
            "two-sequence",
            {"variant": "3c", "criterion": "st1"},
            r"criterion='st1' is invalid for variant '3c'; allowed: 'st2'",
        ),
        ("multiplication", {"n_seq": 0}, r"n_seq=0 is invalid"),
        ("lag-distractor", {"q": -1}, r"q=-1 is invalid"),
        ("chorales", {"step": 0}, r"step=0 is invalid"),
    ],
)
def test_bad_parameters_raise_naming_the_argument(name, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        tasks.make(name, **params)


# ---- what every task shares ------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_batches_are_padded_masked_and_seed_reproducible(name):
    task = small(name)
    b = task.sample(16, G(0))
    n, T, F = b.inputs.shape
    assert (n, F) == (16, task.input_size) and b.inputs.dtype == torch.float32
    assert b.lengths.dtype == torch.int64 and int(b.lengths.max()) == T
    inside = torch.arange(T) < b.lengths.unsqueeze(1)
    assert not b.inputs[~inside].any(), "inputs must be zero after each sequence's end"
    assert not (b.mask & ~inside).any()
    if task.target == "last":
        assert torch.equal(b.mask, torch.arange(T) == (b.lengths - 1).unsqueeze(1))
    else:
        assert torch.equal(b.mask, inside)
    assert not b.targets[~b.mask].any()
    if task.loss_kind == "cross-entropy":
        assert b.targets.shape == (n, T) and int(b.targets.max()) < task.output_size
    else:
        assert b.targets.shape == (n, T, task.output_size)
    again, other = task.sample(16, G(0)), task.sample(16, G(1))
    for field in ("inputs", "targets", "lengths", "mask"):
        assert torch.equal(getattr(b, field), getattr(again, field))
    assert not torch.equal(b.inputs, other.inputs) or not torch.equal(b.targets, other.targets)


@pytest.mark.parametrize("name", ALL)
def test_tasks_declare_a_known_loss_and_target_layout(name):
    task = small(name)
    assert task.loss_kind in LOSSES and task.target in TARGETS
    assert task.name == name and task.test_size >= 1


def test_no_global_rng_is_used():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for name in ALL:
        small(name).sample(4, G(3))
    assert torch.equal(torch.get_rng_state(), before)


# ---- the 1997 adding and multiplication problems ---------------------------------------
@pytest.mark.parametrize("name, low", [("adding", -1.0), ("multiplication", 0.0)])
def test_marked_pairs_follow_the_definition(name, low):
    T, n = 100, 4000
    b = tasks.make(name, T=T).sample(n, G(0))
    lengths, v, m = b.lengths, b.inputs[..., 0], b.inputs[..., 1]
    assert int(lengths.min()) == T and int(lengths.max()) == T + T // 10
    inside = torch.arange(v.shape[1]) < lengths.unsqueeze(1)
    assert float(v[inside].min()) >= low and float(v[inside].max()) <= 1.0
    assert abs(float(v[inside].mean()) - (low + 1) / 2) < 0.01
    ones = m == 1
    assert torch.equal(ones.sum(1), torch.full((n,), 2))
    pos = torch.stack([torch.nonzero(r).squeeze(1) for r in ones])  # (n, 2) sorted
    assert int(pos[:, 0].max()) <= 9 and int(pos[:, 1].max()) <= T // 2 - 2
    # the first mark is uniform on the first 10 pairs (counted with the second mark's help)
    rows = torch.arange(n)
    assert torch.equal(m[rows, lengths - 1], torch.full((n,), -1.0))
    assert torch.equal(m[:, 0] == -1, ~ones[:, 0])
    others = inside & ~ones
    others[:, 0] = False
    others[rows, lengths - 1] = False
    assert not m[others].any()
    # the target is the sum / product of the values of the marked pairs as input
    x1, x2 = v[rows, pos[:, 0]], v[rows, pos[:, 1]]
    expected = 0.5 + (x1 + x2) / 4 if name == "adding" else x1 * x2
    torch.testing.assert_close(b.targets[b.mask].squeeze(-1), expected)


@pytest.mark.parametrize("name, first", [("adding", 0.0), ("multiplication", 1.0)])
def test_a_marked_first_pair_takes_the_papers_value(name, first):
    """1997, sections 5.4 / 5.5: "in the rare case where the first pair gets marked, we set
    X1 to zero" (adding) / "to 1.0" (multiplication): the pair's value, as input, and so
    the target, whichever of the two marks landed there."""
    T, n = 30, 4000
    b = tasks.make(name, T=T).sample(n, G(2))
    v, m = b.inputs[..., 0], b.inputs[..., 1]
    marked = m[:, 0] == 1
    # pair 0 is marked with probability 0.1 + 0.9 / 13 (X1 on it, or X2 on it of the 13 free pairs)
    assert int(marked.sum()) == approx(n * (0.1 + 0.9 / 13), tol="sampled_count")
    assert torch.equal(v[marked, 0], torch.full((int(marked.sum()),), first))
    assert float(v[~marked, 0].std()) > 0.2  # unmarked first pairs keep their random values
    other = torch.where(m[marked, 1:] == 1, v[marked, 1:], torch.zeros_like(v[marked, 1:])).sum(1)
    expected = 0.5 + (first + other) / 4 if name == "adding" else first * other
    torch.testing.assert_close(b.targets[b.mask].squeeze(-1)[marked], expected)


def test_adding_mark_positions_are_uniform():
    # X1 uniform on pairs 0..9; X2 uniform on the other 48 of pairs 0..48 (T = 100):
    # a pair j <= 9 is marked with probability 0.1 + 0.9 / 48, a pair 10 <= j <= 48 with 1 / 48.
    n = 20_000
    b = tasks.make("adding", T=100).sample(n, G(5))
    counts = (b.inputs[..., 1] == 1).sum(0)[:60].float()
    assert not counts[49:].any()
    assert_close(counts[:10], torch.full((10,), n * (0.1 + 0.9 / 48)), tol="sampled_count")
    assert_close(counts[10:49], torch.full((39,), n / 48), tol="sampled_count")


# ---- long time lags ----------------------------------------------------------------------
def test_lag_sequences_are_the_two_training_sequences():
    p = 20
    b = tasks.make("lag", p=p).sample(2000, G(0))
    sym_in, sym_out = b.inputs.argmax(-1), b.targets.argmax(-1)
    assert b.inputs.shape[1] == p and bool((b.inputs.sum(-1) == 1).all())
    first = sym_in[:, 0]
    assert set(first.tolist()) == {p - 1, p}
    assert abs(float((first == p).float().mean()) - 0.5) < 0.04
    assert torch.equal(sym_in[:, 1:], torch.arange(p - 1).expand(2000, -1))
    assert torch.equal(sym_out[:, :-1], torch.arange(p - 1).expand(2000, -1))
    assert torch.equal(sym_out[:, -1], first)


def test_lag_noisy_middle_symbols_are_uniform_and_the_end_repeats_the_start():
    p = 20
    b = tasks.make("lag-noisy", p=p).sample(3000, G(0))
    sym_in, sym_out = b.inputs.argmax(-1), b.targets.argmax(-1)
    middle = sym_in[:, 1:]
    assert int(middle.max()) == p - 2 and int(middle.min()) == 0
    freq = torch.bincount(middle.flatten(), minlength=p - 1).float() / middle.numel()
    assert float((freq - 1 / (p - 1)).abs().max()) < 0.01
    assert torch.equal(sym_out[:, -1], sym_in[:, 0])
    assert torch.equal(sym_out[:, :-1], sym_in[:, 1:])


def test_lag_distractor_structure_and_geometric_lengths():
    q, p, n = 10, 5, 20_000
    b = tasks.make("lag-distractor", q=q, p=p).sample(n, G(0))
    k = b.lengths - q - 3
    assert int(k.min()) == 0
    assert abs(float(k.float().mean()) - 9.0) < 0.3  # E[k] = 0.9 / 0.1
    assert abs(float((k == 0).float().mean()) - 0.1) < 0.01
    sym = b.inputs.argmax(-1)
    rows = torch.arange(n)
    assert bool((sym[:, 0] == p + 1).all()) and bool((sym[rows, b.lengths - 1] == p).all())
    second = sym[:, 1] - (p + 2)
    assert set(second.tolist()) == {0, 1}
    inside = (torch.arange(sym.shape[1]) >= 2) & (torch.arange(sym.shape[1]) < (b.lengths - 1).unsqueeze(1))
    assert int(sym[inside].max()) == p - 1 and int(sym[inside].min()) == 0
    assert torch.equal(b.targets[rows, b.lengths - 1].argmax(-1), second)
    assert torch.equal(b.targets.sum((1, 2)), torch.ones(n))


# ---- two-sequence --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["3a", "3b", "3c"])
def test_two_sequence_information_then_noise(variant):
    """1997, section 5.3: lengths uniform on [T, T + T/10]; the first N elements +1 / -1 by
    class (3b: plus noise of variance 0.2), noise of variance 0.2 after; one target, at each
    sequence's end: 1 / 0 (3a, 3b), 0.2 / 0.8 plus noise of variance 0.1 (3c)."""
    T, N, n = 100, 3, 6000
    b = tasks.make("two-sequence", T=T, N=N, variant=variant).sample(n, G(0))
    x, rows, last = b.inputs[..., 0], torch.arange(n), b.lengths - 1
    counts = torch.bincount(b.lengths - T, minlength=T // 10 + 1)
    assert counts.numel() == T // 10 + 1  # no length outside [T, T + T/10]
    assert_close(counts.float(), torch.full((T // 10 + 1,), n / (T // 10 + 1)), tol="sampled_count")
    inside = torch.arange(x.shape[1]) < b.lengths.unsqueeze(1)
    assert not x[~inside].any()
    assert torch.equal(b.mask, torch.arange(x.shape[1]) == last.unsqueeze(1))
    end = b.targets[rows, last, 0]
    assert not b.targets[~b.mask].any()
    head = x[:, :N]
    if variant == "3c":  # the class from the clean first input; the target is noisy
        assert torch.equal(head.abs(), torch.ones(n, N))
        class1 = head[:, 0] > 0
        for cls, clean in [(class1, 0.2), (~class1, 0.8)]:
            assert abs(float(end[cls].mean()) - clean) < 0.02
            assert abs(float(end[cls].var()) - 0.1) < 0.01
    else:  # the class from the target, 1 or 0
        assert torch.equal(end, end.round())
        class1 = end == 1
    sign = torch.where(class1, 1.0, -1.0).unsqueeze(1).expand(-1, N)
    assert abs(float(class1.float().mean()) - 0.5) < 0.03
    if variant == "3b":
        assert abs(float((head - sign).var()) - 0.2) < 0.01 and abs(float((head - sign).mean())) < 0.02
    else:
        assert torch.equal(head, sign)
    tail = x[:, N:][inside[:, N:]]
    assert abs(float(tail.mean())) < 0.01 and abs(float(tail.var()) - 0.2) < 0.005


# ---- temporal order ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, windows",
    [
        ("temporal-order", [(10, 20), (50, 60)]),
        ("temporal-order-3", [(10, 20), (33, 43), (66, 76)]),
    ],
)
def test_temporal_order_follows_the_definition(name, windows):
    n = 4000
    b = tasks.make(name).sample(n, G(0))
    sym = b.inputs.argmax(-1)
    rows = torch.arange(n)
    assert int(b.lengths.min()) == 100 and int(b.lengths.max()) == 110
    assert bool((sym[:, 0] == TO.index("E")).all())
    assert bool((sym[rows, b.lengths - 1] == TO.index("B")).all())
    relevant = (sym == TO.index("X")) | (sym == TO.index("Y"))
    assert torch.equal(relevant.sum(1), torch.full((n,), len(windows)))
    label = torch.zeros(n, dtype=torch.long)
    positions = [torch.nonzero(r).squeeze(1) for r in relevant]
    for w, (low, high) in enumerate(windows):
        at = torch.stack([p[w] for p in positions]) + 1  # 1-based, as in the paper
        assert int(at.min()) == low and int(at.max()) == high
        label = 2 * label + (sym[rows, at - 1] == TO.index("Y")).long()
    distractor = (
        (torch.arange(sym.shape[1]) > 0) & (torch.arange(sym.shape[1]) < (b.lengths - 1).unsqueeze(1)) & ~relevant
    )
    assert int(sym[distractor].max()) <= TO.index("d")
    assert torch.equal(b.targets[rows, b.lengths - 1].argmax(-1), label)
    freq = torch.bincount(label, minlength=2 ** len(windows)).float() / n
    assert float((freq - 1 / 2 ** len(windows)).abs().max()) < 0.03


# ---- Arjovsky et al. ---------------------------------------------------------------------
def test_copy_layout_and_baseline():
    T = 30
    b = tasks.make("copy", T=T).sample(500, G(0))
    sym = b.inputs.argmax(-1)
    assert b.inputs.shape[1] == T + 20
    assert int(sym[:, :10].min()) == 1 and int(sym[:, :10].max()) == 8
    assert not sym[:, 10 : T + 9].any() and bool((sym[:, T + 9] == 9).all()) and not sym[:, T + 10 :].any()
    assert not b.targets[:, : T + 10].any() and torch.equal(b.targets[:, T + 10 :], sym[:, :10])
    for T, value in [(100, 0.1733), (200, 0.0945), (300, 0.0650), (500, 0.0400)]:
        assert round(tasks.make("copy", T=T).baseline, 4) == value


def test_adding_le_one_mark_in_each_half_and_the_sum():
    T, n = 50, 3000
    b = tasks.make("adding-le", T=T).sample(n, G(0))
    v, m = b.inputs[..., 0], b.inputs[..., 1]
    assert torch.equal(m[:, : T // 2].sum(1), torch.ones(n)) and torch.equal(m[:, T // 2 :].sum(1), torch.ones(n))
    torch.testing.assert_close(b.targets[:, -1, 0], (v * m).sum(1))
    assert abs(float(((b.targets[:, -1, 0] - 1) ** 2).mean()) - 1 / 6) < 0.01  # the baseline


# ---- real data ---------------------------------------------------------------------------
def test_digits_are_the_scikit_learn_images_pixel_by_pixel():
    from sklearn.datasets import load_digits

    d = load_digits()
    task = tasks.make("digits")
    b = task.sample(50, G(0))
    train = torch.tensor(d.data[:1500], dtype=torch.float32) / 16
    for i in range(50):
        hit = (train == b.inputs[i, :, 0]).all(1).nonzero().squeeze(1)
        assert len(hit) >= 1 and int(b.targets[i, -1]) in d.target[hit.numpy()].tolist()
    test = list(task.test_batches(G(0), max_batch=100))
    assert sum(len(t) for t in test) == task.test_size == 297
    assert torch.cat([t.targets[:, -1] for t in test]).tolist() == d.target[1500:].tolist()


def test_chorales_are_binary_piano_rolls_shifted_by_one_step():
    task = tasks.make("chorales", max_chorales=5)
    b = task.sample(3, G(0))
    assert set(b.inputs.unique().tolist()) <= {0.0, 1.0}
    for i in range(3):
        L = int(b.lengths[i])
        assert torch.equal(b.targets[i, : L - 1], b.inputs[i, 1:L])
        voices = b.inputs[i, :L].sum(-1)
        assert float(voices.mean()) > 2.5 and int(voices.max()) <= 8  # four-part chorales
    assert task.test_size == 1 and math.isclose(task.step, 1.0)
