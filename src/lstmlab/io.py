"""Files written whole or not at all: a temporary file in the same folder, then os.replace."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(f) on a temporary binary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _finite(obj):
    """JSON has no inf or NaN: write them as null (and say so where it matters)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path, obj) -> Path:
    text = json.dumps(_finite(obj), indent=1, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text.encode() + b"\n"))


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))
