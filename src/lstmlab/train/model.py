"""The trained model: a recurrent network of any cell, then a linear readout."""

from __future__ import annotations

import torch
from torch import nn

from ..cells import CellSpec, get_cell
from ..layer import Recurrent


class SequenceModel(nn.Module):
    """lstmlab.Recurrent (batch-first) followed by nn.Linear at every step.

    Args:
        input_size, output_size: the task's features and output units.
        hidden_size, cell, num_layers, forget_bias, input_bias: as lstmlab.Recurrent.
        init: "torch" or "1997"; with "1997" the readout too is drawn from U(-0.1, 0.1),
            as every weight in the 1997 paper.
        skip_input: direct input-to-output weights (no bias) added to the readout, so the
            output units see the current input as well as the hidden state. The 1997
            paper's nets for the lag experiments had them (as we read its section 5.2):
            the local next-symbol predictions need no memory, the cells keep the bit.

    Attribute `connected` (True at first): when False the outputs are the skip path plus
    the readout bias alone, and the recurrent layer gets no gradient. The 1997 paper added
    its memory cells only once the error had stopped decreasing (TrainConfig.connect_after).
    Shapes: x (B, T, input_size) -> outputs (B, T, output_size), the raw readout (each
        task squashes it itself).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        cell: str | CellSpec = "lstm",
        num_layers: int = 1,
        init: str = "torch",
        forget_bias: float | None = None,
        input_bias: float | None = None,
        skip_input: bool = False,
    ):
        super().__init__()
        self.rnn = Recurrent(
            input_size,
            hidden_size,
            cell=cell,
            num_layers=num_layers,
            batch_first=True,
            init=init,
            forget_bias=forget_bias,
            input_bias=input_bias,
        )
        self.readout = nn.Linear(hidden_size, output_size)
        self.skip = nn.Linear(input_size, output_size, bias=False) if skip_input else None
        self.connected = True
        if init == "1997":
            heads = [self.readout] if self.skip is None else [self.readout, self.skip]
            with torch.no_grad():
                for p in (p for head in heads for p in head.parameters()):
                    p.uniform_(-0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.connected:
            if self.skip is None:
                raise RuntimeError("a model without skip_input must stay connected")
            return self.skip(x) + self.readout.bias
        h, _ = self.rnn(x)  # (B, T, H)
        y = self.readout(h)  # (B, T, K)
        return y if self.skip is None else y + self.skip(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config, task, seed: int) -> SequenceModel:
    """The model for a config and task, initialised from `seed` alone: the global RNG is
    forked and seeded only for the construction and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cell = get_cell(config.cell).with_options(**config.cell_options)
        return SequenceModel(
            task.input_size,
            config.hidden_size,
            task.output_size,
            cell=cell,
            num_layers=config.num_layers,
            init=config.init,
            forget_bias=config.forget_bias,
            input_bias=config.input_bias,
            skip_input=config.skip_input,
        )
