"""Every ModuleInput torch's own test suite has for nn.LSTM, nn.GRU and nn.RNN
(torch.testing._internal.common_modules.module_db), run through torch's module and through
lstmlab's drop-in built with the same arguments and torch's state_dict: outputs, final
states and the gradients of the input, of hx and of every parameter must agree. float32
and float64, training on and off, every backend; proj_size cases included."""

import pytest
import torch
from torch.testing._internal.common_modules import module_db

import lstmlab
from conftest import assert_close

OURS = {torch.nn.LSTM: lstmlab.LSTM, torch.nn.GRU: lstmlab.GRU, torch.nn.RNN: lstmlab.RNN}
BACKENDS = ["reference", "cpu"]


def _cases():
    out = []
    for info in module_db:
        if info.module_cls not in OURS:
            continue
        for dtype in (torch.float32, torch.float64):
            for training in (True, False):
                inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)
                for i, mi in enumerate(inputs):
                    kw = mi.constructor_input.kwargs
                    tag = "-".join(f"{k}={v}" for k, v in kw.items() if k not in ("input_size", "hidden_size"))
                    name = (
                        f"{info.module_cls.__name__}-{str(dtype)[6:]}-{'train' if training else 'eval'}-"
                        f"{i}-{tag}-hx={len(mi.forward_input.args) > 1}"
                    )
                    out.append(pytest.param(info.module_cls, mi, dtype, training, id=name))
    return out


CASES = _cases()


def _leaves(args):
    """The tensors of the forward arguments (input, then h_0 / (h_0, c_0)), in order."""
    flat = []
    for a in args:
        flat.extend(a if isinstance(a, (tuple, list)) else [a])
    return flat


def _flat_out(result):
    output, state = result
    return [output, *(state if isinstance(state, tuple) else (state,))]


def test_cases_cover_the_three_modules_and_projections():
    counts = {cls: 0 for cls in OURS}
    for case in CASES:
        counts[case.values[0]] += 1
    assert all(n > 0 for n in counts.values()), counts
    assert any(case.values[1].constructor_input.kwargs.get("proj_size", 0) > 0 for case in CASES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("module_cls,module_input,dtype,training", CASES)
def test_module_db_input_matches_torch(module_cls, module_input, dtype, training, backend):
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    torch.manual_seed(0)
    ref = module_cls(*args, **kwargs).to(dtype).train(training)
    ours = OURS[module_cls](*args, **kwargs, backend=backend).to(dtype).train(training)
    ours.load_state_dict(ref.state_dict(), strict=True)
    fwd = module_input.forward_input.args
    leaves = _leaves(fwd)
    assert all(t.requires_grad for t in leaves)

    out_ref, out_ours = _flat_out(ref(*fwd)), _flat_out(ours(*fwd))
    names = [n for n, _ in ref.named_parameters()]
    assert names == [n for n, _ in ours.named_parameters()]
    for what, a, b in zip(["output", "h_n", "c_n"], out_ours, out_ref, strict=False):
        assert a.shape == b.shape, what
        assert_close(a, b, msg=what)
    assert len(out_ours) == len(out_ref)

    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(t.shape, generator=g, dtype=dtype) for t in out_ref]
    grads_ref = torch.autograd.grad(out_ref, [*leaves, *ref.parameters()], cot)
    grads_ours = torch.autograd.grad(out_ours, [*leaves, *ours.parameters()], cot)
    labels = [f"input {i}" for i in range(len(leaves))] + [f"parameter {n}" for n in names]
    for label, a, b in zip(labels, grads_ours, grads_ref, strict=True):
        assert_close(a, b, msg=f"gradient of {label}", tol="float32_gradient" if dtype == torch.float32 else None)
