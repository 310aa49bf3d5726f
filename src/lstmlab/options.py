"""Checks of the layer's constructor arguments: each raises lstmlab.errors.ArgumentError
(a ValueError and a TypeError, what torch raises for bad arguments) naming the argument,
what was given and what is allowed."""

from __future__ import annotations

import math

from .cells import CellSpec, get_cell
from .errors import ArgumentError


def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{name}={value!r} is invalid; allowed: an int >= {minimum}")


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ArgumentError(f"{name}={value!r} is invalid; allowed: True or False")


def check_number(name, value, allowed, ok):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ArgumentError(f"{name}={value!r} is invalid; allowed: {allowed}")


def resolve_spec(
    cell, hidden_size, proj_size, bias, truncate, forget_bias, input_bias, return_cell_states, cell_options
) -> CellSpec:
    """Check the options that depend on the cell; return the cell with its options applied."""
    spec = get_cell(cell).with_options(**cell_options)
    check_int("proj_size", proj_size, 0)
    if proj_size >= hidden_size:
        raise ArgumentError(
            f"proj_size={proj_size} is invalid; allowed: 0 (no projection) up to hidden_size - 1 = {hidden_size - 1}"
        )
    if spec.kind != "lstm":
        # rnn and gru have no gate whose bias forget_bias / input_bias could set; the modern
        # cells have (below), but no truncated rule, cell-state output or projection
        gated = spec.kind not in ("rnn", "gru")
        for name, value in [
            ("truncate", truncate or None),
            ("forget_bias", None if gated else forget_bias),
            ("input_bias", None if gated else input_bias),
            ("return_cell_states", return_cell_states or None),
            ("proj_size", proj_size or None),
        ]:
            if value is not None:
                raise ArgumentError(
                    f"cell {spec.name!r} has no option {name!r} (given {value!r}); it needs a cell state (an LSTM cell)"
                    if not gated
                    else f"cell {spec.name!r} ({spec.kind}) has no option {name!r} (given {value!r}); "
                    f"it is an option of the lstm kind of cell"
                )
    spec.head_size(hidden_size)  # heads must divide hidden_size
    if truncate is not None:
        check_bool("truncate", truncate)
    for name, value, gate, why in [
        (
            "forget_bias",
            forget_bias,
            "f" in spec.gates,
            f"its forget gate is {spec.forget_gate!r}" if spec.kind == "lstm" else "it has no forget gate",
        ),
        ("input_bias", input_bias, "i" in spec.gates, "it has no input gate"),
    ]:
        if value is None:
            continue
        check_number(name, value, "a finite number or None", math.isfinite)
        if not gate:
            raise ArgumentError(f"cell {spec.name!r} has no option {name!r} (given {value!r}): {why}")
        if not bias:
            raise ArgumentError(f"{name}={value!r} needs bias=True")
    return spec
