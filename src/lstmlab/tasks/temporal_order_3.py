"""Temporal order with three relevant symbols (Hochreiter & Schmidhuber 1997, 6b).

As `temporal-order` (6a), with X or Y at t1 in [10, 20], t2 in [33, 43] and t3 in
[66, 76]; 8 classes (XXX .. YYY -> 0 .. 7, X = 0, Y = 1, first symbol most significant).
Same criterion, stopping rule and test set size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import H97, Published
from .temporal_order import TemporalOrder


@dataclass(frozen=True)
class TemporalOrder3(TemporalOrder):
    """No parameters: the 1997 definition (lengths 100-110, three relevant symbols)."""

    name: ClassVar[str] = "temporal-order-3"
    windows: ClassVar[tuple[tuple[int, int], ...]] = ((10, 20), (33, 43), (66, 76))
    output_size: ClassVar[int] = 8
    published: ClassVar[tuple[Published, ...]] = (Published(H97, {}, "LSTM", 571_100, 2, 2560),)


TASK = TemporalOrder3
