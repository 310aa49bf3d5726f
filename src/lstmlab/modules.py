"""lstmlab.LSTM, GRU and RNN: torch.nn.LSTM / GRU / RNN's drop-ins.

`from lstmlab import LSTM` in place of `from torch.nn import LSTM` keeps every call working:
the same positional and keyword arguments (RNN's nonlinearity fourth, as torch's), the
same attributes (mode, nonlinearity, proj_size, all_weights, _flat_weights, ...), the same
parameter names and state_dict in both directions, the same warning for dropout on one
layer and exception types that torch's `except` clauses catch. On top, keyword-only:
`cell=` picks any cell of the same kind (LSTM: "lstm1997", "vanilla" with peepholes, ...), and
every option of `lstmlab.Recurrent` (backend, truncate, forget_bias, ...).
"""

from __future__ import annotations

from .cells import CellSpec, cell_names, get_cell
from .errors import ArgumentError
from .layer import Recurrent


def _of_kind(cls_name: str, kind: str, cell: str | CellSpec) -> str | CellSpec:
    """`cell` if it is a cell of `kind`, else an ArgumentError naming the cells that are."""
    spec = get_cell(cell)
    if spec.kind != kind:
        same = [n for n in cell_names() if get_cell(n).kind == kind]
        raise ArgumentError(
            f"cell={cell if isinstance(cell, str) else spec.name!r} is a {spec.kind} cell; "
            f"lstmlab.{cls_name} takes a {kind} cell: {', '.join(same)} "
            f"(lstmlab.Recurrent takes any)"
        )
    return cell


class LSTM(Recurrent):
    """torch.nn.LSTM, any LSTM cell of the family (cell="lstm" by default).

    Args: as torch.nn.LSTM (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
    dtype=None); keyword-only: cell (an LSTM cell: lstm, lstm1997, vanilla, nig, ...) and
    the options of lstmlab.Recurrent. Inputs, outputs and shapes: lstmlab.Recurrent's,
    exactly torch.nn.LSTM's for cell="lstm": output (L, N, D*P), (h_n (D*num_layers, N, P),
    c_n (D*num_layers, N, H)), P = proj_size or H.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        cell: str | CellSpec = "lstm",
        **options,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device,
            dtype,
            cell=_of_kind("LSTM", "lstm", cell),
            **options,
        )


class GRU(Recurrent):
    """torch.nn.GRU (cell="gru"; the family has one GRU).

    Args: as torch.nn.GRU (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None; proj_size
    stands where torch's RNNBase takes it positionally and must be 0); keyword-only: cell and
    the options of lstmlab.Recurrent. Returns output (L, N, D*H), h_n (D*num_layers, N, H).
    """

    _default_cell = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        cell: str | CellSpec = "gru",
        **options,
    ):
        if proj_size != 0:
            raise ArgumentError(
                f"proj_size={proj_size!r} is invalid: proj_size argument is only "
                f"supported for LSTM, not RNN or GRU; allowed: 0"
            )
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device,
            dtype,
            cell=_of_kind("GRU", "gru", cell),
            **options,
        )


class RNN(Recurrent):
    """torch.nn.RNN: h_t = nonlinearity(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    Args: as torch.nn.RNN (input_size, hidden_size, num_layers=1, nonlinearity="tanh",
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
    with torch's positional order: nonlinearity fourth; proj_size where torch's RNNBase takes
    it, must be 0). nonlinearity: "tanh" or "relu" (cell "rnn-tanh" / "rnn-relu").
    Keyword-only: cell, any plain-RNN cell (e.g. "rnn-sigmoid"; nonlinearity then follows
    the cell), and the options of lstmlab.Recurrent. Returns output (L, N, D*H), h_n.
    """

    _default_cell = "rnn-tanh"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        cell: str | CellSpec | None = None,
        **options,
    ):
        if proj_size != 0:
            raise ArgumentError(
                f"proj_size={proj_size!r} is invalid: proj_size argument is only "
                f"supported for LSTM, not RNN or GRU; allowed: 0"
            )
        if cell is None:
            if nonlinearity not in ("tanh", "relu"):
                raise ArgumentError(
                    f"nonlinearity={nonlinearity!r} is invalid: Unknown nonlinearity "
                    f"'{nonlinearity}'. Select from 'tanh' or 'relu'."
                )
            cell = f"rnn-{nonlinearity}"
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device,
            dtype,
            cell=_of_kind("RNN", "rnn", cell),
            **options,
        )
        if nonlinearity not in ("tanh", self.nonlinearity):  # a cell given beside a nonlinearity
            raise ArgumentError(
                f"nonlinearity={nonlinearity!r} contradicts cell={cell!r}, whose "
                f"nonlinearity is {self.nonlinearity!r}; give one of them"
            )
