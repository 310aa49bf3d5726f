"""The 1997 machine's reference engine: the net's step in PyTorch and autograd through it
with every t-1 source detached, the specification the C++ engine (net1997_cpp) is tested
against. The net and the weight layout: lstmlab.train.net1997's module docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..cells import ACTIVATIONS

if TYPE_CHECKING:
    from .net1997 import BlockNet


@dataclass
class _StepOut:
    y: torch.Tensor  # (K,)
    s: torch.Tensor  # (C,) with its graph back along the cell states
    r: torch.Tensor  # (R,) the next step's recurrent sources (detached when read)


def reference_step(net: BlockNet, w_hid: torch.Tensor, w_out: torch.Tensor, x, s, r, connected=True) -> _StepOut:
    """One step of the net in PyTorch: x (I,), s (C,), r (R,) -> y (K,), s (C,), r (R,).

    r is detached here (the truncated gradient); s is not (the carousel carries the error).
    w_hid / w_out are the full matrices (masked entries must be zero or masked by the caller).
    connected=False: the output units see zeros in place of the cells and hidden units.
    """
    C, B, n = net.cells, net.blocks, net.cells_per_block
    z = torch.cat([x, x.new_ones(1), r.detach()])  # (S,)
    a = w_hid @ z  # (U,)
    one = a.new_ones(B)
    gate = {k: torch.sigmoid(a[net.row(k) : net.row(k) + B]) for k in net.gate_kinds}
    i, f, o = gate.get("in", one), gate.get("forget", one), gate.get("out", one)
    g = ACTIVATIONS[net.cell_input].fn(a[:C])
    s_new = f.repeat_interleave(n) * s + i.repeat_interleave(n) * g
    y_c = o.repeat_interleave(n) * ACTIVATIONS[net.cell_output].fn(s_new)
    hid = torch.sigmoid(a[net.row("hidden") :])
    groups = {"cells": y_c, "gates": torch.cat([gate[k] for k in net.gate_kinds] or [a.new_zeros(0)]), "hidden": hid}
    r_new = torch.cat([groups[k] for k in net.recurrent_from] or [a.new_zeros(0)])
    seen = 1.0 if connected else 0.0
    zo = torch.cat([y_c * seen, hid * seen, x, x.new_ones(1)])
    y = ACTIVATIONS[net.output_activation].fn(w_out @ zo)
    return _StepOut(y, s_new, r_new)


class ReferenceEngine:
    """The specification: autograd through `reference_step`, one sequence at a time.

    On a stream each update period (a step, or a call with update="end") gets its own leaf
    copy of the weights, and the gradient of the period's loss is the sum over all leaves
    since reset(): exactly what forward traces computed with the weights of their time give.
    The graph of a stream grows until reset(): O(T^2) over a stream, for tests only.
    """

    name = "reference"

    def __init__(self, net: BlockNet, w_hid: np.ndarray, w_out: np.ndarray):
        self.net = net
        self.mask = tuple(torch.from_numpy(m) for m in net.masks())
        self.set(w_hid, w_out)
        self.connected = True
        self.reset()

    def reset(self):
        self.s = torch.zeros(self.net.cells, dtype=torch.float64)
        self.r = torch.zeros(self.net.recurrent, dtype=torch.float64)
        self._leaves: list[torch.Tensor] = []

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w[0].numpy().copy(), self.w[1].numpy().copy()

    def set(self, w_hid: np.ndarray, w_out: np.ndarray):
        self.w = [torch.tensor(w, dtype=torch.float64) * m for w, m in zip((w_hid, w_out), self.mask)]

    def _leaf(self) -> list[torch.Tensor]:
        leaf = [w.clone().requires_grad_(True) for w in self.w]
        self._leaves += leaf
        return [w * m for w, m in zip(leaf, self.mask)]

    def _gradient(self, loss) -> list[torch.Tensor]:
        g = [torch.zeros_like(w) for w in self.w]
        if torch.is_tensor(loss) and loss.requires_grad:
            grads = torch.autograd.grad(loss, self._leaves, retain_graph=True, allow_unused=True)
            for k, gr in enumerate(grads):
                if gr is not None:
                    g[k % 2] += gr
        return g

    def _apply(self, g, lr):
        self.w = [w - lr * gr for w, gr in zip(self.w, g)]

    @staticmethod
    def _error(y, target):
        known = ~torch.isnan(target)
        return y[known] - target[known]

    def sequence(self, x: torch.Tensor, targets: torch.Tensor, want_grad: bool = True):
        """One sequence from the zero state: (loss, max |error|, outputs (T, K), gradient or None)."""
        self.reset()
        w_hid, w_out = self._leaf()
        s, r, loss, worst, ys = self.s, self.r, x.new_zeros(()), 0.0, []
        for t in range(x.shape[0]):
            out = reference_step(self.net, w_hid, w_out, x[t], s, r, self.connected)
            s, r = out.s, out.r
            e = self._error(out.y, targets[t])
            loss = loss + 0.5 * (e**2).sum()
            worst = max(worst, float(e.detach().abs().max())) if e.numel() else worst
            ys.append(out.y.detach())
        grad = self._gradient(loss) if want_grad else None
        self.reset()
        return float(loss.detach()), worst, torch.stack(ys), grad

    def sequences(self, xs, lengths, targets, lr, learn, want_outputs, each_step=False):
        N, T, K = targets.shape
        worst, sq = np.zeros(N), np.zeros(N)
        outputs = np.full((N, T, K), np.nan) if want_outputs else None
        for k in range(N):
            n = int(lengths[k])
            if learn and each_step:  # a stream of its own, updated after every step
                self.reset()
                ys = self.stream(xs[k, :n], targets[k, :n], lr, None, "step", True)[0]
                self.reset()
                e = np.nan_to_num(ys - targets[k, :n])  # 0 where there is no target
                worst[k], sq[k] = np.abs(e).max(initial=0.0), 0.5 * (e**2).sum()
            else:
                x, t = torch.from_numpy(xs[k, :n]), torch.from_numpy(targets[k, :n])
                sq[k], worst[k], ys, grad = self.sequence(x, t, want_grad=learn)
                ys = ys.numpy()
                if learn:
                    self._apply(grad, lr)
            if outputs is not None:
                outputs[k, :n] = ys
        return worst, sq, outputs

    def gradient(self, x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grad = self.sequence(torch.from_numpy(x), torch.from_numpy(targets))[3]
        return grad[0].numpy(), grad[1].numpy()

    def stream(self, x, targets, lr, stop_error, update, learn):
        ys, states = [], []
        w_hid, w_out = self._leaf()
        loss = None
        for t in range(x.shape[0]):
            if update == "step" and t > 0:
                w_hid, w_out = self._leaf()
            out = reference_step(self.net, w_hid, w_out, torch.from_numpy(x[t]), self.s, self.r, self.connected)
            self.s, self.r = out.s, out.r.detach()
            e = self._error(out.y, torch.from_numpy(targets[t]))
            if e.numel():
                loss = 0.5 * (e**2).sum() + (loss if loss is not None else 0.0)
            ys.append(out.y.detach().numpy())
            states.append(self.s.detach().numpy().copy())
            stop = stop_error is not None and e.numel() > 0 and bool((e**2 >= stop_error).any())
            if learn and update == "step":
                self._apply(self._gradient(loss), lr)
                loss = None
            if stop:
                break
        if learn and update == "end":
            self._apply(self._gradient(loss), lr)
        return np.array(ys).reshape(-1, self.net.outputs), np.array(states).reshape(-1, self.net.cells), len(ys)
