"""lstmlab: the LSTM family, exactly, and instruments that measure how error flows back
through time.

    >>> import lstmlab
    >>> lstmlab.cell_names()[:4]
    ['rnn-tanh', 'rnn-sigmoid', 'rnn-relu', 'lstm1997']
    >>> rnn = lstmlab.Recurrent(8, 32, cell="vanilla", batch_first=True)
    >>> lstm = lstmlab.LSTM(8, 32, 2)           # torch.nn.LSTM's drop-in: num_layers=2
    >>> step = lstmlab.LSTMCell(8, 32, cell="vanilla")   # torch.nn.LSTMCell's, any LSTM cell (peepholes)
    >>> slstm = lstmlab.Recurrent(8, 32, cell="slstm", heads=4)   # xLSTM's sLSTM, 4 heads
"""

from .cell import GRUCell, LSTMCell, RecurrentCell, RNNCell
from .cells import CellSpec, cell_names, get_cell
from .errors import ArgumentError, InputError, InputTypeError
from .layer import Recurrent
from .modules import GRU, LSTM, RNN

__version__ = "0.1.0"
__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "ArgumentError",
    "CellSpec",
    "GRUCell",
    "InputError",
    "InputTypeError",
    "LSTMCell",
    "RNNCell",
    "Recurrent",
    "RecurrentCell",
    "cell_names",
    "get_cell",
]
