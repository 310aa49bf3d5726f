# Two commands from a fresh clone: `make demo` (the gradient-flow study) and `make test`.
# Each creates .venv from constraints.txt (torch pinned to the 2.13.0 CPU build).
# GPU users: create .venv with their own torch first and pass KEEP_TORCH=1.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lstmlab-installed
OUT ?= out/flow
KEEP_TORCH ?=

.PHONY: env lint test test-isa demo bench clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	grep -v $(if $(KEEP_TORCH),'^torch==','^$$') constraints.txt > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e '.[test,tasks,sweep,build,dev]'
	touch $(STAMP)

# ruff's lint and format check (configured in pyproject.toml): CI runs it first
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(PY) -m pytest -q

# The kernel's other instruction sets: `make test` covers the machine's own (-march=native,
# AVX-512 where it has it); this builds the kernel again for AVX2 (x86-64-v3) and for plain
# x86-64 (SSE2: the compiler splits the 256-bit vectors) and runs the backend tests on each,
# so the paths an AVX-512 machine never takes are tested too. Each -march is its own cached
# build (the build key includes the flags), about 30 s the first time. x86-64 machines only.
ISA_MARCHES ?= x86-64-v3 x86-64
ISA_TESTS ?= tests/test_backend_cpu.py tests/test_backend_cpu_nonfinite.py tests/test_backend_cpu_edges.py \
    tests/test_backend_cpu_proj.py tests/test_backend_cpu_bench.py tests/test_backend_cpu_build.py \
    tests/test_modern_workers.py tests/test_gemm_engine.py
test-isa: $(STAMP)
	@test "$$(uname -m)" = x86_64 || { echo "make test-isa: needs an x86-64 machine, this is $$(uname -m)"; exit 1; }
	@for march in $(ISA_MARCHES); do \
	    echo "== LSTMLAB_CPU_MARCH=$$march: build, then $(ISA_TESTS)"; \
	    LSTMLAB_CPU_MARCH=$$march $(PY) -m lstmlab doctor | grep -E '^ *cpu +available: .*\(256-bit vectors' \
	        || { echo "make test-isa: the cpu backend did not load with 256-bit vectors for -march=$$march"; exit 1; }; \
	    LSTMLAB_CPU_MARCH=$$march $(PY) -m pytest -q $(ISA_TESTS) || exit 1; \
	done

demo: $(STAMP)
	$(PY) -m lstmlab flow --out $(OUT)
	$(PY) -m lstmlab explore --study $(OUT) --out $(OUT)

bench: $(STAMP)
	$(PY) -m lstmlab bench

clean:
	rm -rf $(VENV) out build src/*.egg-info
