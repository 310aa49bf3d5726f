"""Greff et al. variant NFG: vanilla without forget gate (f = 1)."""

from dataclasses import replace

from .vanilla import SPEC as VANILLA

SPEC = replace(VANILLA, name="nfg", summary="no forget gate: f = 1", forget_gate="none")
