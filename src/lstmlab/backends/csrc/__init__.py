"""The C++ sources of the cpu backend, and the code that compiles and loads them.

`load()` returns the compiled extension module, building it on first use with
torch.utils.cpp_extension (ninja + the system C++ compiler) into a cache directory that
persists between runs: $LSTMLAB_BUILD_DIR, else $XDG_CACHE_HOME/lstmlab, else
~/.cache/lstmlab. The file name carries a hash of the sources, the torch and Python
versions, the compiler flags and the CPU's instruction-set flags (the code is compiled
for the host CPU), so a stale or foreign build is never loaded. A build happens in a
private temporary directory and the result is moved into place with an atomic rename:
two processes building at once both succeed and nothing is ever half-written. Once the
file exists, loading it needs no compiler.

Environment: LSTMLAB_CPU_BACKEND=0 disables the backend; LSTMLAB_CPU_MARCH sets the
-march value (default "native"; empty for the compiler's default target).

`load_net1997()` builds and loads the 1997 machine's engine (net1997.cpp, net1997.h; used
by lstmlab.train.net1997) the same way, as its own small module (no OpenMP, no ATen).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = (
    "lstmlab_cpu.cpp",
    "modern_layer.cpp",
    "cells.h",
    "clock.h",
    "gemm.h",
    "modern.h",
    "modern_layer.h",
    "steps.h",
    "vecmath.h",
    "work.h",
)
NET1997_SOURCES = ("net1997.cpp", "net1997.h")


class BuildError(RuntimeError):
    """The extension cannot be built or loaded; str() is a one-line reason."""


def _cflags(openmp: bool = True) -> list[str]:
    march = os.environ.get("LSTMLAB_CPU_MARCH", "native")
    # -fopenmp: at::parallel_for (ATen/ParallelOpenMP.h) is inline, so it only runs in
    # parallel when this file is compiled with OpenMP; it links the libgomp torch loaded.
    # -Werror=switch: a switch over an enum (Act, Kind) has a case for every value, as the
    # kernel relies on (vecmath.h).
    flags = ["-O3"] + (["-fopenmp"] if openmp else []) + ["-ffp-contract=fast", "-fno-math-errno", "-Werror=switch"]
    return flags + ([f"-march={march}"] if march else [])


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def build_dir() -> Path:
    root = os.environ.get("LSTMLAB_BUILD_DIR")
    if root:
        return Path(root)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "lstmlab"


def module_name(prefix: str = "lstmlab_cpu", sources: tuple[str, ...] = SOURCES, openmp: bool = True) -> str:
    import torch

    h = hashlib.sha256()
    for src in sources:
        h.update((HERE / src).read_bytes())
    for part in (torch.__version__, sys.version, " ".join(_cflags(openmp)), _cpu_flags()):
        h.update(part.encode())
    return f"{prefix}_{h.hexdigest()[:16]}"


def _import(name: str, path: Path):
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower() and not ln.lower().startswith("error building extension"):
            return ln[:300]
    return (lines[-1] if lines else text)[:300]


KEEP_BUILDS = 8


def prune(root: Path, keep: int = KEEP_BUILDS, prefix: str = "lstmlab_cpu") -> None:
    """Remove all but the `keep` most recently built modules in `root` (other lstmlab
    versions, toolchains or environments may share the directory: a few are kept; a module
    in use stays mapped after its file is removed)."""

    def built(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile
            return 0.0

    for old in sorted(root.glob(f"{prefix}_*.so"), key=built, reverse=True)[keep:]:
        try:
            old.unlink()
        except OSError:
            pass


def load():
    """The compiled extension module (built here if needed). Raises BuildError."""
    if os.environ.get("LSTMLAB_CPU_BACKEND", "1") == "0":
        raise BuildError("disabled by LSTMLAB_CPU_BACKEND=0")
    return _load("lstmlab_cpu", SOURCES, "the cpu backend", openmp=True, seconds=30)


def load_net1997():
    """The 1997 machine's engine module (built here if needed). Raises BuildError."""
    return _load("lstmlab_net1997", NET1997_SOURCES, "the 1997 machine's engine", openmp=False, seconds=15)


def _load(prefix: str, sources: tuple[str, ...], what: str, openmp: bool, seconds: int):
    name = module_name(prefix, sources, openmp)
    root = build_dir()
    target = root / f"{name}.so"
    if target.exists():
        try:
            return _import(name, target)
        except ImportError as e:
            if target.exists():
                raise BuildError(f"cannot load {target}: {e}") from None
            # removed meanwhile (another process pruned the directory): build it again
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BuildError(f"no C++ compiler ({compiler!r} not on PATH) to build it, and no prebuilt {target}")
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        raise BuildError("ninja is not installed (pip install ninja); it is needed to build it") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    except OSError as e:
        raise BuildError(f"cannot create the build directory {root}: {e}") from None
    print(f"lstmlab: compiling {what} into {root} (once; about {seconds} s)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        module = cpp_extension.load(
            name=name,
            sources=[str(HERE / src) for src in sources if src.endswith(".cpp")],
            extra_include_paths=[str(HERE)],
            extra_cflags=_cflags(openmp),
            extra_ldflags=["-fopenmp"] if openmp else [],
            build_directory=str(tmp),
            verbose=False,
        )
        os.replace(tmp / f"{name}.so", target)
    except Exception as e:  # a compiler error, a missing header: the reason is the message
        raise BuildError(f"build failed: {_first_error(str(e))}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    module.build_seconds = time.perf_counter() - start
    prune(root, prefix=prefix)
    return module
