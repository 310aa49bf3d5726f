"""The Python mirror of the kernel's buffer layout (csrc/cells.h `Cell` and `Layout`):
the flags the kernel reads, and the index maps between torch's parameter layout and the
kernel's, with which the input weights, biases and state are packed before a run and
their gradients unpacked after. The recurrent weights are not copied here: the kernel
reads weight_hh and weight_gg through the maps r_src and a_src and writes their gradients
in torch's layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ...cells import ACTIVATIONS, CellSpec
from . import BuildError

_KIND = {"rnn": 0, "lstm": 1, "gru": 2}
_FORGET = {"free": 0, "coupled": 1, "none": 2}


def check_activations(kernel: dict[str, int]) -> frozenset[str]:
    """Check the kernel's table of activations (its module's `activations`, name -> code)
    against lstmlab.cells.ACTIVATIONS: every name the kernel knows must be ours with the
    same code. Raises BuildError naming every activation on which they differ. Returns the
    names of ours the kernel does not know (yet): the cpu backend hands cells that use one
    to the reference backend."""
    ours = {name: a.code for name, a in ACTIVATIONS.items()}
    diffs = [
        f"{n!r} is {kernel[n]} in the kernel but not in lstmlab.cells.ACTIVATIONS" for n in kernel if n not in ours
    ]
    diffs += [
        f"{n!r} is {ours[n]} in lstmlab.cells.ACTIVATIONS but {kernel[n]} in the kernel"
        for n in ours
        if n in kernel and kernel[n] != ours[n]
    ]
    if diffs:
        raise BuildError(
            "the kernel's activation codes (csrc/vecmath.h) disagree with lstmlab.cells.ACTIVATIONS: "
            + "; ".join(diffs)
        )
    return frozenset(n for n in ours if n not in kernel)


@dataclass(frozen=True)
class Plan:
    """The kernel's configuration for one (cell, hidden size, slicing), and the maps between
    torch's parameter layout and the kernel's (csrc/cells.h `Layout`).

    cfg: the flags of csrc/cells.h `Cell`. bounds: the slices of hidden units.
    Hs: the width of h (the state's first part, the output): proj_size with a projection
        (one slice; the maps below are then the identity there), else H.
    x_src: for each row of the kernel's input weights (= gates column), the row of
        weight_ih it takes (G*H: a zero row, for gru's separate h-side n block).
    r_src: for each row of the kernel's recurrent weights Wh, the row of weight_hh.
    x_dst / hb_dst: the gates column each entry of bias_ih (row of weight_ih) / bias_hh
        adds to. s_src: for each column of the kernel's state S, the index into cat(h, a);
        s_dst its inverse. a_src (FGR): for each row (and column) of the kernel's
        gate-to-gate weights Wa, the row (column) of weight_gg. None stands for the
        identity (no index op needed).
    """

    cfg: list
    bounds: list
    H: int
    Hs: int
    gate_cols: int
    x_src: torch.Tensor | None
    r_src: torch.Tensor | None
    x_dst: torch.Tensor | None
    hb_dst: torch.Tensor | None
    s_src: torch.Tensor | None
    s_dst: torch.Tensor | None
    a_src: torch.Tensor | None

    def pack(self, W_ih, b_ih, b_hh, h0, a0):
        """The kernel's Wx (gate_cols, I), bx (gate_cols,) and s0 (B, K) (no autograd here)."""
        zero_row = lambda w: torch.cat([w, w.new_zeros(1, w.shape[1])])
        Wx = W_ih if self.x_src is None else zero_row(W_ih).index_select(0, self.x_src)
        bx = W_ih.new_zeros(self.gate_cols)
        if b_ih is not None:
            for dst, b in ((self.x_dst, b_ih), (self.hb_dst, b_hh)):
                bx = bx + b if dst is None else bx.index_add(0, dst, b)
        s0 = _select(h0 if a0 is None else torch.cat([h0, a0], 1), 1, self.s_src)
        return Wx.contiguous(), bx, s0.contiguous()

    def unpack_state(self, s, with_a):
        """(h, a) in torch's order from the kernel's state S (a: None without FGR)."""
        s = _select(s, 1, self.s_dst)
        return (s[:, : self.Hs], s[:, self.Hs :]) if with_a else (s, None)

    def unpack_grads(self, dWx, dbx, with_bias):
        """Gradients of weight_ih, bias_ih, bias_hh from the kernel's (those of weight_hh
        and weight_gg leave the kernel in torch's layout)."""
        dW_ih = _select(dWx, 0, self.x_dst)
        db_ih = _select(dbx, 0, self.x_dst) if with_bias else None
        db_hh = _select(dbx, 0, self.hb_dst) if with_bias else None
        return dW_ih, db_ih, db_hh


def _select(t: torch.Tensor, dim: int, idx: torch.Tensor | None) -> torch.Tensor:
    return t if idx is None else t.index_select(dim, idx)


def _or_identity(idx: list[int]) -> torch.Tensor | None:
    return None if idx == list(range(len(idx))) else torch.tensor(idx, dtype=torch.long)


@functools.lru_cache(maxsize=256)
def plan(spec: CellSpec, H: int, bounds: tuple[int, ...], truncate: bool, proj: int = 0) -> Plan:
    """The Plan for a cell, hidden size H, slices `bounds`, the truncated rule and the width
    of the projection (proj_size; 0: none, else one slice only) (cached)."""
    if proj and len(bounds) != 2:
        raise ValueError(f"bounds={bounds!r} with proj={proj}: a projection runs in one slice of hidden units")
    gates, fed_back = spec.gates, spec.recurrent_gates
    if spec.kind == "gru":
        blocks, n_rec_blocks = ("r", "z", "hn", "n"), 3  # h-side n (R_n h + b_hn) kept apart from x-side n
    else:  # FGR: the gates fed back through weight_gg first (in its order), so they are contiguous
        blocks, n_rec_blocks = fed_back + tuple(g for g in gates if g not in fed_back), len(gates)
    n_blocks, A = len(blocks), len(fed_back)
    P = len(bounds) - 1
    slice_of = [p for p in range(P) for _ in range(bounds[p], bounds[p + 1])]

    def col(blk: int, u: int, width: int) -> int:  # kernel row of (block, unit): csrc/cells.h Layout
        p = slice_of[u]
        u0, w = bounds[p], bounds[p + 1] - bounds[p]
        return width * u0 + blk * w + u - u0

    def arow(j: int, u: int) -> int:  # row (column) of Wa of a-block j (0..A-1), unit u: Layout::arow
        p = slice_of[u]
        return A * bounds[p] + j * (bounds[p + 1] - bounds[p]) + u - bounds[p]

    def scol(j: int, u: int) -> int:  # mirrors Layout::scol
        return u if j == 0 else H + arow(j - 1, u)

    x_blk = {"n": 3} if spec.kind == "gru" else {}
    h_blk = {"n": 2} if spec.kind == "gru" else {}
    gate_cols, R, K = n_blocks * H, n_rec_blocks * H, (1 + A) * H
    x_src, r_src = [len(gates) * H] * gate_cols, [0] * R
    x_dst, hb_dst = ([0] * (len(gates) * H) for _ in range(2))
    for gi, name in enumerate(gates):
        for u in range(H):
            j = gi * H + u
            x_dst[j] = col(x_blk.get(name, blocks.index(name)), u, n_blocks)  # weight_ih, bias_ih
            hb_dst[j] = col(h_blk.get(name, blocks.index(name)), u, n_blocks)  # bias_hh (gates row)
            r_src[col(h_blk.get(name, blocks.index(name)), u, n_rec_blocks)] = j  # weight_hh (recurrent rows)
            x_src[x_dst[j]] = j
    s_src = [0] * K
    for u in range(H):
        s_src[scol(0, u)] = u
        for j in range(A):
            s_src[scol(1 + j, u)] = H + j * H + u
    s_dst = [0] * K
    for k, src in enumerate(s_src):
        s_dst[src] = k
    a_src = [0] * (A * H)
    for j in range(A):
        for u in range(H):
            a_src[arow(j, u)] = j * H + u

    def blk(name):
        return blocks.index(name) if name in blocks else -1

    def peep(name):
        return spec.peephole_gates.index(name) if name in spec.peephole_gates else -1

    def a_blk(name):  # S block 1 + j holds gates block j (csrc/lstmlab_cpu.cpp checks it)
        return 1 + fed_back.index(name) if name in fed_back else -1

    lstm = spec.kind == "lstm"
    cfg = [
        _KIND[spec.kind],
        ACTIVATIONS[spec.activation].code,
        ACTIVATIONS[spec.output_activation].code,
        *(blk(g) if lstm else -1 for g in "ifgo"),
        _FORGET[spec.forget_gate],
        *(peep(g) for g in "ifo"),
        *(a_blk(g) for g in "ifo"),
        int(truncate),
        n_blocks,
        n_rec_blocks,
        A,
    ]
    ident = _or_identity
    dst = ident if len(gates) * H == gate_cols else torch.tensor  # gru: 3H rows into 4H, never the identity
    # one slice: S is cat(h, a) as torch holds it, h proj wide with a projection
    s_src, s_dst = (None, None) if proj else (ident(s_src), ident(s_dst))
    return Plan(
        cfg,
        list(bounds),
        H,
        proj or H,
        gate_cols,
        ident(x_src),
        ident(r_src),
        dst(x_dst),
        dst(hb_dst),
        s_src,
        s_dst,
        ident(a_src),
    )
