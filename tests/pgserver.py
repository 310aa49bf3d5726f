"""A throwaway PostgreSQL server on loopback for the tests: its own cluster in a temporary
folder, a free port, stopped and removed afterwards. Set LSTMLAB_TEST_POSTGRES to a URL to
use an existing server instead."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager


def server_binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres():
    bindir = server_binaries()
    if bindir is None:
        raise FileNotFoundError("no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)")
    data = tempfile.mkdtemp(prefix="lstmlab-pg-")
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)
    try:
        run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "lstmlab", "--no-sync")
        run(
            f"{bindir}/pg_ctl",
            "-D",
            data,
            "-l",
            f"{data}/log",
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off",
            "start",
        )
        try:
            run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "lstmlab", "lstmlab")
            yield f"postgresql+psycopg2://lstmlab@127.0.0.1:{port}/lstmlab"
        finally:
            run(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(data, ignore_errors=True)
