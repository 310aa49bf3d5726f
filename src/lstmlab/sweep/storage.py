"""The sweep's --storage URL: checked before any work, and turned into the URL SQLAlchemy
opens. No Optuna or SQLAlchemy import here (the CLI checks the URL cheaply).

Allowed: sqlite:///FILE (relative to the working folder; sqlite:////abs/path for an
absolute one), the folder must exist; sqlite:// or sqlite:///:memory: (in memory: one
process only); postgresql://USER:PASS@HOST[:PORT]/DB, or with an explicit driver
(postgresql+psycopg2://...). A bare postgresql:// means SQLAlchemy's default driver, which
is psycopg (version 3) since SQLAlchemy 2.1; lstmlab[sweep] installs psycopg2, so when
psycopg is absent and psycopg2 present the URL is opened as postgresql+psycopg2://.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlsplit

BACKENDS = ("sqlite", "postgresql")
ALLOWED = "sqlite:///FILE or postgresql://USER:PASS@HOST/DB"
# drivers SQLAlchemy knows for PostgreSQL -> the module each needs
PG_DRIVERS = {"psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def sqlite_path(url: str) -> str | None:
    """The database file of a sqlite URL; None for an in-memory database."""
    rest = url.split("://", 1)[1]
    path = rest[1:] if rest.startswith("/") else rest
    path = path.split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def check_storage(url, option: str = "storage", workers: int = 1, must_exist: bool = False) -> None:
    """Raise ValueError naming `option` unless `url` is a storage the sweep can use with
    `workers` processes (must_exist: the SQLite file must be there, for reports)."""
    bad = f"{option}={url!r} is invalid"
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"{bad}; allowed: a database URL, e.g. {ALLOWED}")
    scheme = url.split("://", 1)[0]
    backend, _, driver = scheme.partition("+")
    if backend not in BACKENDS:
        raise ValueError(f"{bad}: unknown database {backend!r}; allowed: {', '.join(BACKENDS)} ({ALLOWED})")
    if backend == "sqlite":
        if driver:
            raise ValueError(f"{bad}: sqlite takes no driver; allowed: sqlite:///FILE")
        path = sqlite_path(url)
        if path is None:
            if workers > 1:
                raise ValueError(
                    f"{bad}: an in-memory SQLite database is private to one process, so "
                    f"{workers} workers cannot share it; allowed: sqlite:///FILE or "
                    "postgresql://USER:PASS@HOST/DB"
                )
            return
        folder = Path(path).parent
        if not folder.is_dir():
            raise ValueError(f"{bad}: the folder {str(folder)!r} of the database file does not exist")
        if must_exist and not Path(path).is_file():
            raise ValueError(f"{bad}: the database file {path!r} does not exist")
        return
    if driver and driver not in PG_DRIVERS:
        raise ValueError(f"{bad}: unknown PostgreSQL driver {driver!r}; allowed: {', '.join(PG_DRIVERS)}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError as e:
        raise ValueError(f"{bad}: malformed URL ({e}); allowed: {ALLOWED}") from None
    if not parts.netloc and not parts.path.strip("/"):
        raise ValueError(f"{bad}: no server and no database; allowed: {ALLOWED}")


def engine_url(url: str) -> str:
    """The URL SQLAlchemy should open for a checked `url` (see the module's docstring).
    Raises MissingExtra when the PostgreSQL driver it needs is not installed."""
    from ..extras import MissingExtra

    scheme, rest = url.split("://", 1)
    backend, _, driver = scheme.partition("+")
    if backend != "postgresql":
        return url
    if not driver:
        if _installed("psycopg"):
            return url
        driver = "psycopg2"
        url = f"postgresql+psycopg2://{rest}"
    if not _installed(PG_DRIVERS[driver]):
        raise MissingExtra(
            f"--storage {scheme}:// needs the PostgreSQL driver {PG_DRIVERS[driver]}, which is "
            "not installed; install it with pip install 'lstmlab[sweep]' (psycopg2)",
            name=PG_DRIVERS[driver],
        )
    return url


def shown(url: str) -> str:
    """The URL with its password masked, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
