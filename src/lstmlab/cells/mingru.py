"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): update gate of the input alone;
h_t = (1 - z) h_{t-1} + z g(W_h x_t)."""

from .spec import CellSpec

SPEC = CellSpec("mingru", "mingru", "minGRU (2024): update gate of the input alone, no recurrent weights", "g_min")
