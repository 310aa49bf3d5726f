"""LSTM with forget gate (Gers, Schmidhuber & Cummins 2000), no peepholes: torch.nn.LSTM."""

from .spec import CellSpec

SPEC = CellSpec("lstm", "lstm", "forget gate (2000), no peepholes = torch.nn.LSTM", torch_module="LSTM")
