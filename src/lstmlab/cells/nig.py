"""Greff et al. variant NIG: vanilla without input gate (i = 1)."""

from dataclasses import replace

from .vanilla import SPEC as VANILLA

SPEC = replace(VANILLA, name="nig", summary="no input gate: i = 1", input_gate=False)
