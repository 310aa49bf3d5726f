"""Small subcommands: `cells` (the family at a glance) and `doctor` (backends)."""

from __future__ import annotations

import torch

from .backends import availability
from .cells import cell_names, get_cell


def cell_table(input_size: int, hidden_size: int) -> list[dict]:
    rows = []
    for name in cell_names():
        s = get_cell(name)
        rows.append(
            {
                "cell": name,
                "parameters": s.num_parameters(input_size, hidden_size),
                "gates": "".join(s.gates),
                "state": ",".join(s.state_names),
                "truncated": s.truncate,
                "change": s.summary,
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _cells(args) -> int:
    import lstmlab

    for flag, value in (("--input-size", args.input_size), ("--hidden", args.hidden), ("--steps", args.steps)):
        if value < 1:
            raise ValueError(f"{flag}={value} is invalid; allowed: an int >= 1")
    print(f"Cells (parameters for input {args.input_size}, hidden {args.hidden}, one layer):\n")
    print(markdown_table(cell_table(args.input_size, args.hidden)))
    if args.run:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.steps, 2, args.input_size, generator=g)
        print(f"\nOne forward and backward pass of every cell (T={args.steps}, B=2):")
        for name in cell_names():
            torch.manual_seed(0)
            m = lstmlab.Recurrent(args.input_size, args.hidden, cell=name)
            out = m(x)[0]
            out.square().mean().backward()
            gn = torch.sqrt(sum(p.grad.square().sum() for p in m.parameters()))
            print(f"  {name:12s} output {tuple(out.shape)}  |h_T|={out[-1].norm():.4f}  |grad|={gn:.3e}")
    return 0


def _doctor(args) -> int:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, (ok, why) in availability().items():
        print(f"  {name:10s} {'available' if ok else 'UNAVAILABLE'}: {why}")
    from .backends.csrc import BuildError
    from .train.net1997_cpp import engine_module

    try:
        print(f"  the 1997 machine's engine (lstmlab.train.net1997) available: {engine_module().__name__}")
    except BuildError as e:
        print(f"  the 1997 machine's engine (lstmlab.train.net1997) UNAVAILABLE: {e} (fast=False still runs)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cells", help="the cell family: parameters, gates, defining change")
    p.add_argument("--input-size", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--run", action="store_true", help="also run every cell once")
    p.set_defaults(func=_cells)
    p = sub.add_parser("doctor", help="which backends are available, and why not")
    p.set_defaults(func=_doctor)
