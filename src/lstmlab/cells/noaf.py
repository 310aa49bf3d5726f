"""Greff et al. variant NOAF: vanilla without output activation (h = o * c)."""

from dataclasses import replace

from .vanilla import SPEC as VANILLA

SPEC = replace(VANILLA, name="noaf", summary="no output activation: h(x) = x", output_activation="identity")
