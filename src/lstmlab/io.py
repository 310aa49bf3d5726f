"""Files written whole or not at all: a temporary file in the same folder, then os.replace.
And the check, before any work, that an output path can be written."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(f) on a temporary binary file beside `path`, then rename it into place.
    The file gets the mode a plain open() would give it (0o666 less the umask), not
    mkstemp's private 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def check_writable(path: str | os.PathLike, option: str, folder: bool = True) -> Path:
    """Raise ValueError naming `option` unless `path` (a folder if `folder`, else a file)
    can be created or written: checked before the work starts, not after. Creates nothing
    that stays: the nearest existing folder is probed with a temporary file."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if folder else "a file"
        raise ValueError(f"{option} {str(path)!r} is not writable: it exists and is not {kind}")
    parent = path if folder else path.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {str(path)!r} is not writable: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(path)!r} is not writable: no permission to write in {str(existing)!r}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".lstmlab-probe.")
    except OSError as e:
        raise ValueError(f"{option} {str(path)!r} is not writable: {e.strerror} in {str(existing)!r}") from None
    os.close(fd)
    os.unlink(probe)
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
