"""Elman RNN with tanh: h_t = tanh(W x_t + R h_{t-1} + b) (torch.nn.RNN)."""

from .spec import CellSpec

SPEC = CellSpec("rnn-tanh", "rnn", "plain RNN, tanh", activation="tanh", torch_module="RNN")
