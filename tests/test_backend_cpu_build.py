"""Building, loading and choosing the cpu backend: backend='auto' prefers it, importing
lstmlab never needs a compiler, and when the backend cannot be had, auto falls back to the
reference with a one-line warning that says why while backend='cpu' raises with the
reason; `lstmlab doctor` reports it."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import lstmlab
from lstmlab import backends
from lstmlab.backends import cpu, csrc, reference


def run_python(code, **env):
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_auto_prefers_the_cpu_backend_when_available():
    ok, why = backends.availability()["cpu"]
    if not ok:
        pytest.skip(why)
    assert backends.get_backend("auto", "cpu") is cpu
    assert backends.get_backend("cpu") is cpu


def test_unavailable_backend_falls_back_with_the_reason(monkeypatch):
    monkeypatch.setattr(cpu, "_ext", None)
    monkeypatch.setattr(cpu, "_ext_error", "no C++ compiler ('c++' not on PATH) to build it")
    assert backends.availability()["cpu"] == (False, "no C++ compiler ('c++' not on PATH) to build it")
    with pytest.warns(UserWarning, match=r"backend 'cpu' unavailable \(no C\+\+ compiler.*using 'reference'"):
        assert backends.get_backend("auto", "cpu") is reference
    with pytest.raises(RuntimeError, match=r"backend='cpu' is unavailable: no C\+\+ compiler"):
        backends.get_backend("cpu")
    m = lstmlab.Recurrent(2, 3, backend="cpu")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        m(torch.randn(4, 1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, _ = lstmlab.Recurrent(2, 3)(torch.randn(4, 1, 2))  # auto still runs (on the reference)
    assert out.shape == (4, 1, 3)


@pytest.mark.slow
def test_without_compiler_or_cache_import_works_and_auto_warns_once(tmp_path):
    code = (
        "import warnings, torch, lstmlab\n"
        "m = lstmlab.Recurrent(2, 3)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out, _ = m(torch.randn(5, 2, 2))\n"
        "print(out.shape, [str(x.message) for x in w])\n"
        "print(lstmlab.backends.availability()['cpu'])\n"
    )
    r = run_python(code, CXX=str(tmp_path / "no-such-compiler"), LSTMLAB_BUILD_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "torch.Size([5, 2, 3])" in r.stdout
    assert "backend 'cpu' unavailable (no C++ compiler" in r.stdout and "using 'reference'" in r.stdout
    assert '(False, "no C++ compiler' in r.stdout
    doctor = subprocess.run(
        [sys.executable, "-m", "lstmlab", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "LSTMLAB_BUILD_DIR": str(tmp_path)},
    )
    assert doctor.returncode == 0
    assert "cpu        UNAVAILABLE: no C++ compiler" in doctor.stdout
    assert "reference  available" in doctor.stdout


@pytest.mark.slow
def test_disabled_by_environment():
    r = run_python("import lstmlab.backends as b; print(b.availability()['cpu'])", LSTMLAB_CPU_BACKEND="0")
    assert r.returncode == 0 and "(False, 'disabled by LSTMLAB_CPU_BACKEND=0')" in r.stdout


@pytest.mark.slow
def test_a_build_is_cached_and_loads_without_a_compiler():
    ok, why = cpu.available()
    if not ok:
        pytest.skip(why)
    target = csrc.build_dir() / f"{csrc.module_name()}.so"
    assert target.exists()
    r = run_python(
        "import lstmlab.backends as b; print(b.availability()['cpu'])",
        CXX="/no/such/compiler",
        LSTMLAB_BUILD_DIR=str(csrc.build_dir()),
    )
    assert r.returncode == 0 and "(True, 'compiled for this CPU" in r.stdout, r.stdout + r.stderr


def test_build_key_changes_with_the_sources(monkeypatch, tmp_path):
    name = csrc.module_name()
    copy = tmp_path / "csrc"
    copy.mkdir()
    for src in csrc.SOURCES:
        (copy / src).write_bytes((csrc.HERE / src).read_bytes())
    monkeypatch.setattr(csrc, "HERE", copy)
    assert csrc.module_name() == name
    with open(copy / "cells.h", "a") as f:
        f.write("\n// edited\n")
    assert csrc.module_name() != name


def test_prune_keeps_the_most_recent_builds(tmp_path):
    for i in range(11):
        f = tmp_path / f"lstmlab_cpu_{i:016x}.so"
        f.write_bytes(b"")
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "unrelated.so").write_bytes(b"")
    csrc.prune(tmp_path, keep=8)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"lstmlab_cpu_{i:016x}.so" for i in range(3, 11)] + ["unrelated.so"])


def test_every_source_file_is_in_the_build_key():
    # each file in the key of one module: the cpu backend's or the 1997 machine's engine's
    on_disk = {p.name for p in csrc.HERE.iterdir() if p.suffix in (".cpp", ".h")}
    assert not set(csrc.SOURCES) & set(csrc.NET1997_SOURCES)
    assert on_disk == set(csrc.SOURCES) | set(csrc.NET1997_SOURCES)


@pytest.mark.slow
def test_doctor_lists_every_backend():
    r = subprocess.run([sys.executable, "-m", "lstmlab", "doctor"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    for name in backends.backend_names():
        assert f"  {name:10s} " in r.stdout
