"""lstmlab's exception types: each derives from every built-in type torch raises in the
same situation, so code written against torch.nn.LSTM (`except RuntimeError`, `except
TypeError`, ...) catches ours, while our messages still name the argument, what was given
and what is allowed.

    ArgumentError: a bad constructor argument. torch raises TypeError for a wrong type
        (input_size=2.5, bias=1) and ValueError for a wrong value (proj_size=-1).
    InputError: a bad forward input or state. torch raises RuntimeError for shapes
        (feature count, hx shape, zero time steps) and ValueError for dims and dtype.
    InputTypeError: forward was given something that is not a tensor where one is needed;
        torch fails with AttributeError ('list' object has no attribute 'dim') or TypeError.
"""

from __future__ import annotations


class ArgumentError(ValueError, TypeError):
    """A bad constructor (or cell option) argument."""


class InputError(ValueError, RuntimeError):
    """A forward input or initial state of the wrong shape, dtype or device."""


class InputTypeError(InputError, TypeError, AttributeError):
    """A forward input or initial state that is not a tensor (or tuple) where one is needed.

    Also an InputError: for some of these torch gets further and fails on a shape
    (an LSTM given a tensor for hx indexes it as (h_0, c_0) and raises RuntimeError)."""
