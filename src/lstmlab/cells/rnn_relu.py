"""Plain RNN with ReLU (torch.nn.RNN(nonlinearity="relu"))."""

from .spec import CellSpec

SPEC = CellSpec("rnn-relu", "rnn", "plain RNN, ReLU", activation="relu", torch_module="RNN")
