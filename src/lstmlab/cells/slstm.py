"""sLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): the scalar-memory
LSTM with an exponential input gate, a normaliser state n and a stabiliser m; the
recurrent matrix is block-diagonal over heads (option heads, default 1 = full)."""

from .spec import CellSpec

SPEC = CellSpec("slstm", "slstm", "xLSTM's sLSTM (2024): exponential gating, normaliser, stabiliser")
