"""Plain RNN with the logistic sigmoid, the activation of the 1991/1997 analyses."""

from .spec import CellSpec

SPEC = CellSpec("rnn-sigmoid", "rnn", "plain RNN, logistic sigmoid", activation="sigmoid")
