"""The cell registry: every module in this package that defines `SPEC` is one cell.

Adding a cell means adding one file here with `SPEC = CellSpec(...)`; nothing else.
"""

from __future__ import annotations

from ..errors import ArgumentError
from ..registry import discover
from .spec import ACTIVATIONS, Activation, CellSpec

_REGISTRY: dict[str, CellSpec] = {}  # filled by discover() at the end of this file

# The order of cell_names(): plain RNNs, the LSTM line in historical order, Greff's
# variants, GRU, then the modern cells (xLSTM's sLSTM, Feng et al.'s minimal ones). Cells
# not listed here (new files) follow in alphabetical order.
_ORDER = (
    "rnn-tanh",
    "rnn-sigmoid",
    "rnn-relu",
    "lstm1997",
    "lstm",
    "vanilla",
    "nig",
    "nfg",
    "nog",
    "niaf",
    "noaf",
    "np",
    "cifg",
    "fgr",
    "gru",
    "slstm",
    "minlstm",
    "mingru",
)


def cell_names() -> list[str]:
    """The registered cell names, in a stable, documented order."""
    rank = {n: i for i, n in enumerate(_ORDER)}
    return sorted(_REGISTRY, key=lambda n: (rank.get(n, len(rank)), n))


def get_cell(cell: str | CellSpec) -> CellSpec:
    """The CellSpec for a registry name (or a CellSpec, returned as is)."""
    if isinstance(cell, CellSpec):
        return cell
    if not isinstance(cell, str) or cell not in _REGISTRY:
        raise ArgumentError(f"cell={cell!r} is not a registered cell; valid cells: {', '.join(cell_names())}")
    return _REGISTRY[cell]


_REGISTRY.update(discover(__name__, __path__, "SPEC", lambda spec: spec.name))

__all__ = ["ACTIVATIONS", "Activation", "CellSpec", "cell_names", "get_cell"]
