"""Greff et al. variant CIFG: coupled input and forget gate, f = 1 - i."""

from dataclasses import replace

from .vanilla import SPEC as VANILLA

SPEC = replace(VANILLA, name="cifg", summary="coupled input and forget gate: f = 1 - i", forget_gate="coupled")
