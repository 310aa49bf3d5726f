"""Today's recipe for the 1997 rows it was searched on: the modern arm's configuration
there (lstmlab.train.rows1997 extends it, untuned, to the other rows).

The recipe, with the reasons and the seed spread of the search in each row's `why`: cell "lstm"
(forget gate, torch's parameterisation), Adam, online or small batches, forget_bias high
(3-8: the forget gate starts open, so the cell state carries error back over the whole
sequence) and input_bias negative (the 1997 paper's remedy for internal state drift:
input gates start nearly shut, so a cell does not integrate every distractor to
saturation before it has learned what to store). Without the two biases Adam learned
neither adding nor temporal order in the paper's budget. Lag p = 100 needs the paper's
own net: direct input-to-output weights beside one memory cell that is connected once
those weights have learned the local predictions (see its row).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cells import get_cell
from .config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """Today's recipe for one 1997 row, as the search that found it ran it.

    task, params: the problem. lstm: the TrainConfig fields of the LSTM run (model and
    optimiser), the modern arm's configuration (lstmlab.train.rows1997). budget: the
    sequences a search run had (the paper's count, plus the lag check's 10,000).
    eval_every: sequences between evaluations in the search. why: the reasons for the
    choices, and the seed spread.
    """

    task: str
    params: dict
    lstm: dict
    budget: int
    eval_every: int = 1_000
    why: str = ""


# The 1997 net for the lag task: a memory cell with an input gate only, g the logistic
# sigmoid, h the identity (Hochreiter & Schmidhuber 1997, section 5.2).
LAG_CELL = {"activation": "sigmoid", "output_activation": "identity", "output_gate": False}

RECIPES_1997 = (
    Recipe(
        "adding",
        {"T": 100},
        dict(cell="lstm", hidden_size=16, forget_bias=8.0, input_bias=-5.0, optimizer="adam", lr=0.01, batch_size=8),
        budget=74_000,
        why="Stronger biases than the recipe's: with 5 / -3 (H=8, batch 4) the sum is learned "
        "by ~15,000 sequences, but 2,000 in a row within 0.04 took 42,616 / 65,456 / 59,744 "
        "sequences or more than 74,000 (seeds 0-3); with 8 / -5, H=16, batch 8: 40,200 / "
        "36,080 / 30,488 / 41,288. Without the biases: not learned in 74,000 (the test error "
        "stays at the target's variance).",
    ),
    Recipe(
        "lag",
        {"p": 100},
        dict(
            cell="lstm1997",
            cell_options=LAG_CELL,
            hidden_size=1,
            init="1997",
            skip_input=True,
            connect_after=2_000,
            optimizer="adam",
            lr=0.03,
            clip_norm=1.0,
            loss_steps="sum",
        ),
        budget=5_040 + 10_000,
        why="The paper's net for 2a (its section 5.2): the output units see the input units directly "
        "and one memory cell with an input gate and no output gate, cell input g the logistic "
        "sigmoid, cell output h the identity (10,611 weights; the paper's table gives 10,504), the "
        "cell added once the error of the direct weights has stopped falling (here after 2,000 "
        "sequences, which count). Adam lr 0.03, gradient norm clipped at 1: seeds 0-7 succeed after "
        "2,628 / 2,727 / 2,737 / 2,863 / 3,324 / 2,638 / - / 2,587 sequences (seed 6 learns the bit "
        "but not 10,000 in a row within the budget). Plain SGD as in the paper (lr 0.6, errors "
        "summed) succeeds for some seeds only: the input gate often shuts for good when the cell "
        "is connected. Without the skip weights no configuration we tried (cells lstm, "
        "lstm1997, vanilla, nfg, cifg, noaf; H 4-256; forget bias 0-10, input bias 0 to -6) "
        "learned the first symbol: the one hidden layer then makes the 99 local predictions too, "
        "counts time in its cell states to |c| ~ 100, and tanh(c) hides the bit. With the skip "
        "weights but tanh output squashing, the cells still drift and saturate.",
    ),
    Recipe(
        "temporal-order",
        {},
        dict(cell="lstm", hidden_size=16, forget_bias=5.0, input_bias=-3.0, optimizer="adam", lr=0.003, batch_size=1),
        budget=31_390,
        why="The recipe, online: 3,603 / 4,989 / 5,327 sequences (seeds 0-2); batch 4, lr 0.01: "
        "7,168; no biases: not learned in 40,000; forget bias 3 alone: 21,060.",
    ),
    Recipe(
        "reber",
        {},
        dict(cell="lstm", hidden_size=16, forget_bias=5.0, input_bias=-3.0, optimizer="adam", lr=0.01, batch_size=1),
        budget=8_440,
        eval_every=100,
        why="The recipe, online, checked every 100 sequences: 2,300 / 1,900 / 3,200 sequences "
        "(seeds 0-2); without the biases 2,700. Success counts are multiples of eval_every.",
    ),
)


def weights(config: TrainConfig, task) -> int:
    """The trained model's weight count: one recurrent layer, the linear readout and the
    skip weights if any."""
    I, K = task.input_size, task.output_size
    spec = get_cell(config.cell).with_options(**config.cell_options)
    return spec.num_parameters(I, config.hidden_size) + config.hidden_size * K + K + (I * K if config.skip_input else 0)


__all__ = ["LAG_CELL", "RECIPES_1997", "Recipe", "weights"]
