"""lstmlab: the LSTM family, exactly, and instruments that measure how error flows back
through time.

    >>> import lstmlab
    >>> lstmlab.cell_names()[:4]
    ['rnn-tanh', 'rnn-sigmoid', 'rnn-relu', 'lstm1997']
    >>> rnn = lstmlab.Recurrent(8, 32, cell="vanilla", batch_first=True)
"""
from .cells import CellSpec, cell_names, get_cell
from .layer import Recurrent

__version__ = "0.1.0"
__all__ = ["CellSpec", "Recurrent", "cell_names", "get_cell"]
