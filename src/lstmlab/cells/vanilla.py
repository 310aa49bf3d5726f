"""Greff et al. 2015 "vanilla" LSTM: forget gate and peepholes (Gers 2002), full gradient."""

from .spec import CellSpec

SPEC = CellSpec("vanilla", "lstm", "forget gate + peepholes (Greff et al.), full BPTT", peepholes=True)
