"""Greff et al. variant FGR: full gate recurrence.

Each of i, f, o also receives the previous step's i, f, o activations through its own H x H
matrix (nine in all, stacked as weight_gg). The previous activations are part of the state.
"""

from dataclasses import replace

from .vanilla import SPEC as VANILLA

SPEC = replace(VANILLA, name="fgr", summary="full gate recurrence: i, f, o see previous i, f, o", gate_recurrence=True)
