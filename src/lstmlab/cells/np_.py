"""Greff et al. variant NP: vanilla without peepholes."""

from dataclasses import replace

from .vanilla import SPEC as VANILLA

SPEC = replace(VANILLA, name="np", summary="no peepholes", peepholes=False)
