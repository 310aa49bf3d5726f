"""Greff et al. variant NIAF: vanilla without input activation (g(x) = x)."""

from dataclasses import replace

from .vanilla import SPEC as VANILLA

SPEC = replace(VANILLA, name="niaf", summary="no input activation: g(x) = x", activation="identity")
