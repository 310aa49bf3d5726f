"""Gradient flow of a real loss: ||dL/dh_t|| and ||dL/dc_t|| at every step."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GradientFlow:
    """h: (T, B) norms of dL/dh_t for t = 1..T (the state after step t); c likewise for
    LSTM cells (else None); h_mean / c_mean: averaged over the batch, (T,)."""

    h: torch.Tensor
    c: torch.Tensor | None
    loss: float

    @property
    def h_mean(self):
        return self.h.mean(1)

    @property
    def c_mean(self):
        return None if self.c is None else self.c.mean(1)


def gradient_flow(model, x, loss_fn, hx=None, layer: int = 0, direction: int = 0) -> GradientFlow:
    """One forward and backward pass of loss_fn(model(x)[0]) that also records the norm of
    the total gradient reaching every step's state: dL/dh_t (through the output at t and
    through every later step) and dL/dc_t.

    Args:
        model: a lstmlab.Recurrent. x: its input (not packed). loss_fn: output -> scalar.
        hx: initial state. layer, direction: which layer's states to record.
    Returns:
        GradientFlow. Parameter gradients are accumulated as by loss.backward().
    """
    names = model.spec.state_names
    norms = {"h": [], "c": []}

    def keep(slot):
        def hook(grad):
            slot.copy_(grad.detach().norm(dim=-1))  # returns None: the gradient is unchanged
        return hook

    def probe(k, d, t, old, new, trace):
        if (k, d) != (layer, direction):
            return
        for name, tensor in zip(names, new):
            if name in norms and tensor.requires_grad:
                slot = torch.zeros(tensor.shape[0], dtype=tensor.dtype)
                norms[name].append(slot)
                tensor.register_hook(keep(slot))

    with torch.enable_grad():
        out = model.run(x, hx, probe=probe)[0]
        loss = loss_fn(out)
        loss.backward()
    if not norms["h"]:
        raise ValueError("gradient_flow: no state required grad (are all parameters frozen "
                         "and x without requires_grad?)")
    return GradientFlow(torch.stack(norms["h"]), torch.stack(norms["c"]) if norms["c"] else None,
                        float(loss.detach()))
