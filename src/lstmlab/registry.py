"""Discovery for the one-file-per-entry registries (cells, tasks): every module of a
package that defines a given attribute is one entry; adding an entry is adding a file."""

from __future__ import annotations

import importlib
import pkgutil


def discover(package: str, path, attribute: str, key) -> dict:
    """{key(value): value} for every module `package.NAME` (on `path`) defining `attribute`.

    Raises RuntimeError if two modules define the same key.
    """
    found: dict = {}
    for info in pkgutil.iter_modules(path):
        value = getattr(importlib.import_module(f"{package}.{info.name}"), attribute, None)
        if value is None:
            continue
        name = key(value)
        if name in found:
            raise RuntimeError(f"{package}: {name!r} is defined twice (module {info.name})")
        found[name] = value
    return found
