"""The embedded and continual embedded Reber grammars against a grammar written out
independently as a regular expression, and their legal-next-symbol sets against the
continuations seen in many strings."""

import re

import torch

from lstmlab import tasks
from lstmlab.tasks.reber import SYMBOLS as REBER


def G(seed):
    return torch.Generator().manual_seed(seed)


# ---- Reber grammars -------------------------------------------------------------------------
# Written out from the automaton independently of the generator: from state 3 the walk is
# (T* V P X)* T* V, then V (end) or P S (end).
_FROM3 = r"(?:T*VPX)*T*V(?:V|PS)"
_REBER = rf"B(?:TS*X(?:S|X{_FROM3})|P{_FROM3})E"
EMBEDDED = re.compile(rf"B(?:T{_REBER}T|P{_REBER}P)E")


def decode(batch, i):
    L = int(batch.lengths[i])
    return "".join(REBER[k] for k in batch.inputs[i, :L].argmax(-1))


def test_reber_strings_are_accepted_by_the_grammar_and_sets_are_disjoint():
    task = tasks.make("reber")
    train, test = task.eval_sets(G(0))["train"], task.eval_sets(G(0))["test"]
    ends = {"T": "TE", "P": "PE"}
    train_strings = set()
    for batch, store in ((train, train_strings), (test, None)):
        for i in range(len(batch)):
            s = decode(batch, i) + REBER[int(batch.targets[i, int(batch.lengths[i]) - 1].argmax())]
            assert EMBEDDED.fullmatch(s), s
            assert s.endswith(ends[s[1]])
            if store is not None:
                store.add(s)
            else:
                assert s not in train_strings
    assert len(train) == 256 and len(test) == 256
    assert 0.4 < sum(decode(train, i)[1] == "T" for i in range(256)) / 256 < 0.6


def test_reber_legal_sets_match_the_continuations_seen_in_many_strings():
    from lstmlab.tasks.reber import Coins, embedded_string

    coin, continuations, legal_of, visits = Coins(G(7)), {}, {}, {}
    for _ in range(3000):
        s, legal = embedded_string(coin)
        assert EMBEDDED.fullmatch(s)
        for t in range(len(s) - 1):
            prefix = s[: t + 1]
            continuations.setdefault(prefix, set()).add(s[t + 1])
            legal_of[prefix] = set(legal[t])
            visits[prefix] = visits.get(prefix, 0) + 1
    frequent = [p for p in continuations if visits[p] >= 40]  # both branches seen, w.p. 1 - 2^-39
    assert len(frequent) > 30
    for prefix in frequent:
        assert continuations[prefix] == legal_of[prefix], prefix


def test_reber_sample_draws_from_the_training_set():
    task = tasks.make("reber")
    train = {decode(task.eval_sets(G(0))["train"], i) for i in range(256)}
    b = task.sample(200, G(3))
    assert all(decode(b, i) in train for i in range(200))


def test_cerg_streams_are_concatenated_strings_with_legal_targets():
    b = tasks.make("cerg", length=400).sample(8, G(0))
    for i in range(8):
        s = decode(b, i)
        strings = re.match(rf"(?:{EMBEDDED.pattern})+", s).group(0)
        assert len(s) - len(strings) < 40  # the cut-off tail is part of one more string
        after_end = [t for t in range(len(strings)) if s[t] == "E" and (t == len(strings) - 1 or s[t + 1] == "B")]
        for t in after_end:
            assert [REBER[k] for k in range(7) if b.targets[i, t, k]] == ["B"]
        for t in range(len(s) - 1):
            assert bool(b.targets[i, t, REBER.index(s[t + 1])]), "the actual next symbol is legal"
