"""Gradient flow of a real loss: ||dL/dh_t|| and ||dL/dc_t|| at every step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends import get_backend


@dataclass
class GradientFlow:
    """h: (T, B) norms of dL/dh_t for t = 1..T (the state after step t); c likewise for
    cells with a cell state (lstm and slstm kinds, else None); n: slstm's normaliser (else
    None). h_mean / c_mean / n_mean: averaged over the batch, (T,).

    slstm's c and n are the stabilised states c~ exp(-m_t), n~ exp(-m_t) (m detached): their
    gradients are the error the backward carries, and the step Jacobians act on (the paper's
    unstabilised c~ would have the gradient dL/dc_t exp(-m_t)). The cell-state path keeps its
    meaning: the diagonal of dc_t/dc_{t-1} is the stabilised forget gate f'_t (<= 1), and the
    rest of the c -> c product runs through h and the recurrent weights, as for the LSTM."""

    h: torch.Tensor
    c: torch.Tensor | None
    loss: float
    n: torch.Tensor | None = None

    @property
    def h_mean(self):
        return self.h.mean(1)

    @property
    def c_mean(self):
        return None if self.c is None else self.c.mean(1)

    @property
    def n_mean(self):
        return None if self.n is None else self.n.mean(1)


def gradient_flow(model, x, loss_fn, hx=None, layer: int = 0, direction: int = 0) -> GradientFlow:
    """One forward and backward pass of loss_fn(model(x)[0]) that also records the norm of
    the total gradient reaching every step's state: dL/dh_t (through the output at t and
    through every later step) and dL/dc_t (through h_t and c_{t+1}); slstm also dL/dn_t.

    On the cpu backend the fused backward hands the norms back as it goes (no extra work);
    otherwise the reference loop runs with a hook on every state.

    Args:
        model: a lstmlab.Recurrent. x: its input (not packed). loss_fn: output -> scalar.
        hx: initial state. layer, direction: which layer's states to record.
    Returns:
        GradientFlow, t in input order (also for the reverse direction). Parameter
        gradients are accumulated as by loss.backward().
    """
    if not (0 <= layer < model.num_layers and 0 <= direction < model.num_directions):
        raise ValueError(
            f"layer={layer}, direction={direction} is invalid; the model has "
            f"{model.num_layers} layers and {model.num_directions} directions"
        )
    backend = get_backend(model.backend, x.device.type, model.spec)
    # The cpu backend's norms are of h and c; slstm's carried state also has n (and its c is
    # the stabilised one), so slstm is measured by the hooked loop on the reference backend.
    if hasattr(backend, "GradNorms") and model.spec.kind != "slstm":
        with backend.GradNorms() as rec, torch.enable_grad():
            loss = loss_fn(model(x, hx)[0])
            loss.backward()
        run = rec.runs[layer * model.num_directions + direction]
        return GradientFlow(run.h, run.c, float(loss.detach()))
    return _hooked(model, x, loss_fn, hx, layer, direction)


def _hooked(model, x, loss_fn, hx, layer, direction) -> GradientFlow:
    names = model.spec.state_names
    norms = {n: [] for n in ("h", "c", "n") if n in names}  # not slstm's m: it carries no error

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
        raise ValueError(
            "gradient_flow: no state required grad (are all parameters frozen and x without requires_grad?)"
        )
    order = (lambda v: v.flip(0)) if direction == 1 else (lambda v: v)
    stacked = {k: order(torch.stack(v)) if v else None for k, v in norms.items()}
    return GradientFlow(stacked["h"], stacked.get("c"), float(loss.detach()), stacked.get("n"))
