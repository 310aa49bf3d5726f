"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): forget and input gates of the
input alone, normalised to sum to 1; h_t = f' h_{t-1} + i' g(W_h x_t)."""

from .spec import CellSpec

SPEC = CellSpec("minlstm", "minlstm", "minLSTM (2024): gates of the input alone, no recurrent weights", "g_min")
