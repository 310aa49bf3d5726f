"""Throughput of the 1997 machine: sequences (or stream steps) per second of the C++ engine
and of the autograd reference, on the paper's nets with random data of the paper's shapes
(only the shapes, and one-hot inputs where the task has them, matter to the speed). CPU
time of this process (time.process_time), so that other processes on a shared machine do
not count; one thread either way.

    python -m lstmlab.train.net1997_bench [--seconds S]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .net1997 import BlockNet, Init1997, Machine1997

REBER = {"cell_bias": False, "output_bias": False}
LAG_2A = {
    "output_gate": False,
    "recurrent_from": (),
    "cell_bias": False,
    "gate_bias": False,
    "output_bias": False,
    "output_from_inputs": True,
}
NO_BIAS = {"cell_bias": False, "gate_bias": False, "output_bias": False}
# name: (net, sequence length (0: a stream), targets at every step (else only the last), one-hot inputs)
CASES = {
    "adding T=100 (2x2, 93 weights)": (BlockNet(2, 1, 2, 2), 100, False, False),
    "adding T=1000 (2x2, 93 weights)": (BlockNet(2, 1, 2, 2), 1000, False, False),
    "embedded Reber T=12 (4x1, 264 weights)": (BlockNet(7, 7, 4, 1, **REBER), 12, True, True),
    "embedded Reber T=12 (3x2, 276 weights)": (BlockNet(7, 7, 3, 2, **REBER), 12, True, True),
    "lag 2a p=100 (1x1, 10,504 weights)": (BlockNet(101, 101, 1, 1, **LAG_2A), 102, True, True),
    "lag 2c p=1000 (2x1, 1004 inputs)": (BlockNet(1004, 2, 2, 1, **NO_BIAS), 1000, False, True),
    "Gers 2000 stream (4x2 with forget gates)": (BlockNet(7, 7, 4, 2, forget_gate=True, **REBER), 0, True, True),
}


def _data(net: BlockNet, n: int, T: int, every_step: bool, one_hot: bool, rng):
    if one_hot:
        xs = np.eye(net.inputs)[rng.integers(0, net.inputs, size=(n, T))]
    else:
        xs = rng.uniform(-1, 1, (n, T, net.inputs))
    targets = np.full((n, T, net.outputs), np.nan)
    if every_step:
        targets[:] = rng.integers(0, 2, (n, T, net.outputs))
    else:
        targets[:, -1] = rng.uniform(size=(n, net.outputs))
    return xs, np.full(n, T), targets


def _rate(fn, units: int, seconds: float) -> float:
    """units per CPU second of fn(), repeated until `seconds` of CPU time have passed."""
    fn()  # warm up (and build the engine)
    done, start = 0, time.process_time()
    while True:
        fn()
        done += units
        spent = time.process_time() - start
        if spent >= seconds:
            return done / spent


def bench(seconds: float = 1.0, log=print) -> dict[str, dict[str, float]]:
    """{case: {"cpp": rate, "reference": rate, "unit": "sequences/s" | "steps/s"}}."""
    rng = np.random.default_rng(0)
    init = Init1997(0.1)
    results = {}
    for name, (net, T, every, one_hot) in CASES.items():
        row = {}
        for fast in (True, False):
            m = Machine1997(net, init, 0, fast=fast)
            if T == 0:  # a continual stream, an update after every step
                steps = 10_000 if fast else 20
                xs, _, ts = _data(net, 1, steps, every, one_hot, rng)
                row[m.backend] = _rate(lambda m=m, x=xs[0], t=ts[0]: m.stream(x, t, 0.1), steps, seconds)
                row["unit"] = "steps/s"
            else:
                n = max(1, int(200_000 // (T * (1 if fast else 1000))))
                xs, lengths, ts = _data(net, n, T, every, one_hot, rng)
                row[m.backend] = _rate(lambda m=m, a=(xs, lengths, ts): m.train_sequences(*a, lr=0.1), n, seconds)
                row["unit"] = "sequences/s"
        row["speedup"] = row["cpp"] / row["reference"]
        rates = f"cpp {row['cpp']:>12,.0f}  reference {row['reference']:>8,.1f} {row['unit']}"
        log(f"{name:44s} {rates}  x{row['speedup']:,.0f}")
        results[name] = row
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per measurement (default 1)")
    bench(p.parse_args(argv).seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
