"""Shared test settings: the tolerance table (one table, per dtype, plus named entries for
the comparisons that are not two implementations of the same maths) and the Hypothesis
profiles."""

import itertools
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import lstmlab

# Hypothesis: "ci" is derandomised (the same examples on every run, so a failure in CI is a
# failure on every machine) and prints the reproduction blob of a failing example; "dev"
# draws fresh examples each run, to explore. Select with HYPOTHESIS_PROFILE; by default CI
# (the CI environment variable is set: .ci/run sets it) gets "ci", everyone else "dev".
# Tests that set max_examples themselves keep their own count under either profile. (Both
# profiles say derandomize: under CI, Hypothesis's own default, which a profile inherits, is
# derandomised.)
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    derandomize=False,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

# (rtol, atol). Keyed by dtype: comparing two implementations of the same maths (a backend
# against the reference, ours against torch.nn). Keyed by name: comparisons that genuinely
# need another tolerance, each with the reason.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    # autocast: bfloat16 operands (8 bits of mantissa: 2^-8 = 3.9e-3 relative per rounding)
    # over a few steps of a recurrence
    torch.bfloat16: (2e-2, 2e-2),
    # float32 gradients of a whole sequence from two implementations that sum over steps, rows
    # and gates in different orders (torch's kernels against ours, whose order follows the
    # threads' split): an entry that is a sum with cancellation carries the rounding of its
    # terms, ~1e-7 times the sum of their magnitudes (1e-5 absolute was exceeded at 1.9e-5)
    "float32_gradient": (1e-5, 5e-5),
    # float32 gradients through h_{t-1} - h~ with both near 1e38 (saturated_gates): the
    # difference of two such numbers keeps their rounding, ~1e-7 of 1e38, and two kernels
    # that order the products differently land 1e-5 to 3e-5 apart relative to the result
    "float32_cancelling": (1e-4, 1e-5),
    # the explorer page's JavaScript doubles against lstmlab.theory's: the same formulas a few
    # roundings apart, for values down to 1e-300 (products over long lags), so no absolute floor
    "js_vs_python": (1e-12, 1e-300),
    # values stored in a run's flow.json rounded to 4 or 6 decimals (analysis/watch.py) against
    # the same quantity recomputed: within half a unit of the last decimal and float64 noise
    "rounded_4": (0.0, 1e-4),
    "rounded_6": (0.0, 1e-6),
    # the sum of a 20-bin histogram stored at 6 decimals: 20 half-units
    "rounded_6_sum20": (0.0, 1e-5),
    # a horizon log(1e6) / -lambda from an exponent stored at 6 decimals, stored at 2 decimals
    "horizon_rounded": (1e-3, 0.0),
    # the parallel scan (backends/scan.py) in float32 over 10 000 steps against the float64
    # recurrence, relative to the sum of the magnitudes of each h_t's terms (forward) or to the
    # largest gradient entry (backward): O(sqrt T) = a few hundred roundings of 6e-8 along any
    # path, measured 1e-7 to 1e-6; the float32 sequential loop is off by 1.6e-4 on one of the cases
    "scan_float32_long": (1e-5, 0.0),
    # the same operations in the same order (a value carried unchanged, or computed twice): bit for bit
    "exact": (0.0, 0.0),
    # a float64 closed form against the same quantity computed another way a few roundings away
    # (a derivative formula, the norm of an explicit product, log|a|): tighter than the float64
    # entry, whose slack is for whole forward/backward passes through long sequences
    "float64_closed_form": (1e-12, 1e-14),
    # hand-assembled float64 step Jacobians (every gate's derivative summed per entry) against
    # autograd's, entrywise, absolute: entries of size ~1 built from a dozen products
    "jacobian": (0.0, 1e-8),
    # torch.autograd.gradcheck's comparison of the analytic gradient with central differences
    # of step GRADCHECK_EPS in float64: the finite-difference error is ~eps^2 * f''' ~ 1e-12,
    # the rounding error ~1e-16 / eps ~ 1e-10; rtol is gradcheck's default
    "gradcheck": (1e-3, 1e-8),
    # torch.nn.utils.clip_grad_norm_ scales by max_norm / (norm + 1e-6), not max_norm / norm:
    # relative 1e-6 / norm, under 1e-4 for the gradient norms (> 1e-2) the test sees, in float32
    "clip_grad_norm": (1e-4, 0.0),
    # the maximum of a function over a dense grid (step 1e-4) against its exact maximum: the grid
    # misses the peak by at most half a step, a relative shortfall of ~f''/f * step^2 / 8
    "dense_search": (1e-9, 0.0),
    # an exponential decay rate fitted to a measured gradient against the top Lyapunov exponent
    # of the same run: the two agree asymptotically, a finite run within a few per cent
    "decay_fit": (0.05, 0.0),
    # the same over the short runs of the gradient-flow study (40 steps): within a quarter
    "decay_fit_short": (0.25, 0.0),
    # frequencies counted in a seeded sample of 20 000 sequences against their probability:
    # counts of ~400 to ~2400, whose binomial standard deviations are 2-5 % of the count
    "sampled_count": (0.25, 0.0),
}
GRADCHECK_EPS = 1e-6


def assert_close(actual, expected, dtype=None, msg="", tol=None):
    """torch.testing.assert_close with the tolerance TOL[tol], else TOL[dtype or expected.dtype]."""
    rtol, atol = TOL[tol if tol is not None else (dtype or expected.dtype)]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


def run_and_differentiate(backend, m, x, state, lengths, reverse, truncate):
    """Outputs, final state (and, lstm kinds, every cell state) of one run_layer of `backend`
    (a module with run_layer: lstmlab.backends.reference or cpu) with layer 0 of m, then the
    gradients of a fixed random projection of them with respect to x, the initial state and
    every weight, by name: "output", "final <state>", "cells", "d x", "d <state>0",
    "d <parameter>". slstm's m_n carries no gradient on either backend: its value is
    compared, its gradient is 0 (as for any leaf the outputs do not reach)."""
    spec = m.spec
    out, final, cells = backend.run_layer(
        spec, m.cell_params(0), x, state, lengths, reverse=reverse, truncate=truncate, return_cells=spec.kind == "lstm"
    )
    outs = [out, *final] + ([cells] if cells is not None else [])
    g = torch.Generator().manual_seed(99)
    cot = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    leaves = [x, *state, *m.parameters()]
    pairs = [(o, c) for o, c in zip(outs, cot) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], leaves, [c for _, c in pairs], allow_unused=True)
    grads = [torch.zeros_like(leaf) if gr is None else gr for leaf, gr in zip(leaves, grads)]
    names = ["output", *[f"final {n}" for n in spec.state_names]] + (["cells"] if cells is not None else [])
    names += ["d x", *[f"d {n}0" for n in spec.state_names], *[f"d {n}" for n, _ in m.named_parameters()]]
    return dict(zip(names, [o.detach() for o in outs] + grads))


def saturated_gates(cell, activation, dtype, T, backend="reference", huge=None):
    """A one-input minlstm / mingru layer with one unit per combination of extreme gate and
    candidate pre-activations (biases from -inf through the ends of exp's range to +inf; the
    input moves them by at most 0.1), x (T, 2, 1) and h0 (1, 2, H): where a gate saturates
    to 0 and multiplies an unbounded candidate (g_min or identity), or a decay of 1e-13
    compounds over steps. A candidate near the dtype's largest value (`huge`, by default)
    makes a gate of the size of its smallest normal number (the end of exp's range) visible
    in the output."""
    # sigmoid is 0 in torch below -88.72 (float) / -709.78 (double): edge +- 0.1 straddles it
    edge, largest = (709.78, 1e307) if dtype == torch.float64 else (88.72, 1e38)
    huge = huge or largest
    levels = [-math.inf, -huge, -edge, -edge + 1.5, -30.0, 0.0, 30.0, edge, huge, math.inf]
    G = 3 if cell == "minlstm" else 2
    combos = torch.tensor(list(itertools.product(levels, repeat=G)), dtype=dtype)
    H = combos.shape[0]
    m = lstmlab.Recurrent(1, H, cell=cell, activation=activation, dtype=dtype, backend=backend)
    with torch.no_grad():
        m.weight_ih_l0.fill_(0.1)
        m.bias_ih_l0.copy_(combos.t().reshape(-1))  # rows gate-major: g * H + unit
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(T, 2, 1, generator=g, dtype=dtype) * 2 - 1).requires_grad_()
    h0 = torch.randn(1, 2, H, generator=g, dtype=dtype).requires_grad_()
    return m, x, h0


def approx(expected, tol):
    """pytest.approx(expected) within TOL[tol]."""
    rtol, atol = TOL[tol]
    return pytest.approx(expected, rel=rtol, abs=atol)


def gradcheck(fn, inputs) -> bool:
    """torch.autograd.gradcheck within TOL["gradcheck"] (raises on a mismatch)."""
    rtol, atol = TOL["gradcheck"]
    return torch.autograd.gradcheck(fn, inputs, eps=GRADCHECK_EPS, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def cpu_backend():
    """The cpu backend, built on first use. A module of its tests uses this (pytestmark) and
    fails, rather than skips, when the backend cannot be had, unless LSTMLAB_CPU_BACKEND=0
    switched it off on purpose."""
    from lstmlab.backends import cpu

    ok, why = cpu.available()
    if not ok:
        if os.environ.get("LSTMLAB_CPU_BACKEND") == "0":
            pytest.skip(why)
        pytest.fail(f"the cpu backend is unavailable: {why}")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on loopback (see pgserver.py). In CI its absence is a
    failure, not a skip: .ci/run installs it."""
    from pgserver import postgres, server_binaries

    if os.environ.get("LSTMLAB_TEST_POSTGRES"):
        yield os.environ["LSTMLAB_TEST_POSTGRES"]
        return
    if server_binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server not installed; .ci/run installs it from Debian's packages")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    with postgres() as url:
        yield url
