"""Hochreiter & Schmidhuber 1997: the Constant Error Carousel.

No forget gate (c_t = c_{t-1} + i g), cell input g = 4 sigma - 2, output squashing
2 sigma - 1, and the truncated gradient: error flows back in time only along c.
"""

from .spec import CellSpec

SPEC = CellSpec(
    "lstm1997",
    "lstm",
    "original: CEC, no forget gate, truncated gradient",
    activation="g1997",
    output_activation="h1997",
    forget_gate="none",
    truncate=True,
)
