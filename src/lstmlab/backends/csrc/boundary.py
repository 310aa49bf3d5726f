"""The boundary between Python and the kernel: what the kernel is told about a cell, by
name, and which cells it can run.

The kernel's cell (csrc/cells.h `Cell`) crosses the boundary as named whole numbers: the
extension's `Cell(**fields)` takes exactly the names of CELL_FIELDS (csrc/layout.py Plan.cfg
builds them) and checks every value when it is made, once per plan, not per call. The enum
codes here are Python's mirror of the kernel's tables, which the extension exports by name
(`cell_fields`, `kinds`, `forget_modes`, `gru_blocks`, `activations`); `check_kernel`
compares the two when the extension loads, and a kernel that disagrees is not used.

`supports(spec)` says whether the kernel computes a cell at all (its kind, forget mode and
activations are among the kernel's, and it sets no field the kernel does not know); a cell
it cannot run is refused by name before anything is packed (`admit`).

The cell reaches the kernel's custom operators as a string, `spec_key(spec)`, from which
`spec_of` rebuilds it (cached).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import MISSING, fields

from ...cells import ACTIVATIONS, CellSpec
from ...errors import ArgumentError
from . import BuildError

# csrc/cells.h `Cell`, field by field (the extension's `cell_fields`).
CELL_FIELDS = (
    "kind",
    "activation",
    "output_activation",
    "block_i",
    "block_f",
    "block_g",
    "block_o",
    "forget",
    "peep_i",
    "peep_f",
    "peep_o",
    "fed_i",
    "fed_f",
    "fed_o",
    "truncate",
    "n_blocks",
    "n_rec_blocks",
    "n_fed",
)
# The kernel's enums (csrc/cells.h Kind, Forget, GruBlock; csrc/vecmath.h Act), name -> code.
KINDS = {"rnn": 0, "lstm": 1, "gru": 2}
FORGET_MODES = {"free": 0, "coupled": 1, "none": 2}
GRU_BLOCKS = {"r": 0, "z": 1, "hn": 2, "n": 3}  # the blocks of a gru gates row, in this order
# The activations the kernel computes, by their codes in lstmlab.cells.ACTIVATIONS (a newer
# activation of the cell family is run by the reference backend until the kernel has it).
KERNEL_ACTIVATIONS = ("tanh", "sigmoid", "relu", "identity", "g1997", "h1997", "g_min")
# The modern cells' path (csrc/modern.h ModernKind, ForgetAct): its kinds, which do not
# cross as a Cell but as these codes, slstm's forget activations, and the activations of
# the min cells' candidate h~ it computes. g_min is computed for those cells only: the
# generic cells' backward reads an activation's derivative off its output, which for g_min
# is not exact where a tiny negative x rounds sigmoid(x) to 1/2.
MODERN_KINDS = {"slstm": 0, "minlstm": 1, "mingru": 2}
FORGET_ACTIVATIONS = {"sigmoid": 0, "exp": 1}
MIN_CELL_ACTIVATIONS = ("identity", "g_min")

# The CellSpec fields the kernel reads (or that do not change the maths: name, summary,
# torch_module). A field added to CellSpec later is refused at any value but its default.
_KNOWN_SPEC_FIELDS = frozenset(
    (
        "name",
        "kind",
        "summary",
        "activation",
        "output_activation",
        "input_gate",
        "forget_gate",
        "output_gate",
        "peepholes",
        "gate_recurrence",
        "truncate",
        "torch_module",
        "heads",
        "forget_activation",
    )
)


def activation_codes() -> dict[str, int]:
    """name -> code of the activations the kernel computes (the codes of ACTIVATIONS)."""
    return {name: ACTIVATIONS[name].code for name in KERNEL_ACTIVATIONS if name in ACTIVATIONS}


def _differences(what: str, ours: dict, kernel: dict) -> list[str]:
    out = [f"{what} {n!r} is {ours[n]} here but unknown to the kernel" for n in ours if n not in kernel]
    out += [f"{what} {n!r} is {kernel[n]} in the kernel but unknown here" for n in kernel if n not in ours]
    out += [
        f"{what} {n!r} is {ours[n]} here but {kernel[n]} in the kernel"
        for n in ours
        if n in kernel and kernel[n] != ours[n]
    ]
    return out


def check_kernel(ext) -> None:
    """Check the extension's exported tables against this module's: the Cell's field names
    in order, and each enum's names and codes (activations also against ACTIVATIONS: every
    name of KERNEL_ACTIVATIONS must be in it). Raises BuildError naming every difference."""
    diffs = []
    missing = [n for n in KERNEL_ACTIVATIONS if n not in ACTIVATIONS]
    diffs += [f"activation {n!r} is in KERNEL_ACTIVATIONS but not in lstmlab.cells.ACTIVATIONS" for n in missing]
    kernel_fields = tuple(ext.cell_fields)
    if kernel_fields != CELL_FIELDS:
        diffs.append(f"the Cell's fields are {list(kernel_fields)} in the kernel but {list(CELL_FIELDS)} here")
    for what, ours, kernel in (
        ("kind", KINDS, ext.kinds),
        ("forget mode", FORGET_MODES, ext.forget_modes),
        ("gru block", GRU_BLOCKS, ext.gru_blocks),
        ("activation", activation_codes(), ext.activations),
        ("modern kind", MODERN_KINDS, ext.modern_kinds),
        ("forget activation", FORGET_ACTIVATIONS, ext.forget_activations),
    ):
        diffs += _differences(what, ours, dict(kernel))
    if diffs:
        raise BuildError(
            "the kernel's tables (csrc/cells.h, csrc/vecmath.h, csrc/modern.h) disagree with "
            "lstmlab.backends.csrc.boundary: " + "; ".join(diffs)
        )


def supports(spec: CellSpec) -> tuple[bool, str]:
    """(True, "") if the kernel computes this cell, else (False, why): a kind, forget mode
    or activation the kernel does not have, or a CellSpec field it does not know set away
    from its default. Needs no extension (the tables above are checked against it when it
    loads). slstm: any heads (the kernel takes them from weight_hh's shape, (4H, H // heads),
    and refuses a shape whose heads do not divide H) and both forget activations; the min
    cells: the activations of MIN_CELL_ACTIVATIONS."""
    if spec.kind in MODERN_KINDS:
        if spec.forget_activation not in FORGET_ACTIVATIONS:
            return False, f"forget_activation={spec.forget_activation!r} is not one the kernel computes"
        if spec.kind != "slstm" and spec.activation not in MIN_CELL_ACTIVATIONS:
            return False, (
                f"activation={spec.activation!r} is not one the kernel computes for {spec.kind} "
                f"({', '.join(MIN_CELL_ACTIVATIONS)})"
            )
    elif spec.kind not in KINDS:
        kinds = ", ".join([*KINDS, *MODERN_KINDS])
        return False, f"kind {spec.kind!r} is not one the kernel computes ({kinds})"
    elif "g_min" in (spec.activation, spec.output_activation):
        return False, "the kernel computes activation 'g_min' for the minlstm and mingru cells only"
    if spec.forget_gate not in FORGET_MODES:
        return False, f"forget_gate={spec.forget_gate!r} is not one the kernel computes ({', '.join(FORGET_MODES)})"
    known = activation_codes()
    for name in ("activation", "output_activation"):
        value = getattr(spec, name)
        if value not in known:
            return False, f"{name}={value!r} is not an activation the kernel computes ({', '.join(known)})"
    for f in fields(spec):
        if f.name in _KNOWN_SPEC_FIELDS:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        value = getattr(spec, f.name)
        if default is MISSING or value != default:
            return False, f"the kernel does not know the cell field {f.name} (here {value!r})"
    return True, ""


ADMITTED: set[str] = set()  # the spec_key of every cell `admit` let through


def admit(spec: CellSpec, key: str | None = None) -> None:
    """Raise ArgumentError naming the cell and the reason unless the kernel computes it;
    remember `key` (spec_key(spec)), if given, when it does."""
    ok, why = supports(spec)
    if not ok:
        raise ArgumentError(f"cell {spec.name!r} cannot run on backend 'cpu': {why}")
    if key is not None:
        ADMITTED.add(key)


# The CellSpec fields that define the maths (not its name, summary or torch twin).
_SPEC_FIELDS = tuple(f.name for f in fields(CellSpec) if f.name not in ("name", "summary", "torch_module"))


def spec_key(spec: CellSpec) -> str:
    """The cell as the operators' string: "kind='lstm',activation='tanh',...,truncate=False"
    (plain string building, which torch.compile traces)."""
    return ",".join(f"{k}={getattr(spec, k)!r}" for k in _SPEC_FIELDS)


@functools.lru_cache(maxsize=256)
def spec_of(key: str) -> CellSpec:
    """The CellSpec of a spec_key (named by the key)."""
    values = dict(item.split("=", 1) for item in key.split(","))
    return CellSpec(name=key, summary="", **{k: ast.literal_eval(v) for k, v in values.items()})
