"""Shared test settings. Tolerances live here, in one table, per dtype."""
import pytest
import torch

# (rtol, atol) for comparing two implementations of the same maths.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}


def assert_close(actual, expected, dtype=None, msg=""):
    rtol, atol = TOL[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
