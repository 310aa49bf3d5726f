"""Greff et al. variant NOG: vanilla without output gate (o = 1)."""

from dataclasses import replace

from .vanilla import SPEC as VANILLA

SPEC = replace(VANILLA, name="nog", summary="no output gate: o = 1", output_gate=False)
