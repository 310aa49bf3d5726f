"""The trained model: a recurrent network of any cell, then a linear readout."""
from __future__ import annotations

import torch
from torch import nn

from ..layer import Recurrent


class SequenceModel(nn.Module):
    """lstmlab.Recurrent (batch-first) followed by nn.Linear at every step.

    Args:
        input_size, output_size: the task's features and output units.
        hidden_size, cell, num_layers, forget_bias: as lstmlab.Recurrent.
        input_bias: if given, the initial input-gate bias of every layer (put in bias_ih;
            bias_hh's input-gate slice is zeroed, as Recurrent does for forget_bias).
        init: "torch" or "1997"; with "1997" the readout too is drawn from U(-0.1, 0.1),
            as every weight in the 1997 paper.
    Shapes: x (B, T, input_size) -> outputs (B, T, output_size), the raw readout (each
        task squashes it itself).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, cell: str = "lstm",
                 num_layers: int = 1, init: str = "torch", forget_bias: float | None = None,
                 input_bias: float | None = None):
        super().__init__()
        self.rnn = Recurrent(input_size, hidden_size, cell=cell, num_layers=num_layers,
                             batch_first=True, init=init, forget_bias=forget_bias)
        self.readout = nn.Linear(hidden_size, output_size)
        if input_bias is not None:
            self._set_input_bias(input_bias)
        if init == "1997":
            with torch.no_grad():
                self.readout.weight.uniform_(-0.1, 0.1)
                self.readout.bias.uniform_(-0.1, 0.1)

    @torch.no_grad()
    def _set_input_bias(self, value: float) -> None:
        spec, H = self.rnn.spec, self.rnn.hidden_size
        if spec.kind != "lstm" or "i" not in spec.gates:
            raise ValueError(f"input_bias={value!r} needs a cell with an input gate; cell {spec.name!r} has none")
        i = spec.gates.index("i")
        for name, b in self.rnn.named_parameters():
            if name.startswith("bias_ih"):
                b[i * H:(i + 1) * H] = value
            elif name.startswith("bias_hh"):
                b[i * H:(i + 1) * H] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)  # (B, T, H)
        return self.readout(h)  # (B, T, K)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config, task, seed: int) -> SequenceModel:
    """The model for a config and task, initialised from `seed` alone: the global RNG is
    forked and seeded only for the construction and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SequenceModel(task.input_size, config.hidden_size, task.output_size, cell=config.cell,
                             num_layers=config.num_layers, init=config.init,
                             forget_bias=config.forget_bias, input_bias=config.input_bias)
