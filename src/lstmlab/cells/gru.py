"""GRU (Cho et al. 2014) in the form torch.nn.GRU computes; gates stacked r, z, n."""

from .spec import CellSpec

SPEC = CellSpec("gru", "gru", "gated recurrent unit (Cho et al. 2014) = torch.nn.GRU", torch_module="GRU")
