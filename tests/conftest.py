"""Shared test settings. Tolerances live here, in one table, per dtype."""
import pytest
import torch

# (rtol, atol) for comparing two implementations of the same maths.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    # autocast: bfloat16 operands (8 bits of mantissa: 2^-8 = 3.9e-3 relative per rounding)
    # over a few steps of a recurrence
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(actual, expected, dtype=None, msg=""):
    rtol, atol = TOL[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on loopback (see pgserver.py). In CI its absence is a
    failure, not a skip: .ci/run installs it."""
    import os

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
