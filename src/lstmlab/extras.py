"""Optional dependencies: imported where first needed, and when missing, an error that
says which extra of the package installs them (pyproject.toml's optional-dependencies)."""

from __future__ import annotations

import importlib


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the pip extra."""


def require(module: str, extra: str, needed_by: str):
    """import_module(module), or raise MissingExtra naming `extra` and what needs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.partition(".")[0]
        if e.name is None or e.name.partition(".")[0] != top:
            raise  # the package is there but something it imports is broken: show that
        raise MissingExtra(
            f"{needed_by} needs {top}, which is not installed; install it with pip install 'lstmlab[{extra}]'", name=top
        ) from None
