# Two commands from a fresh clone: `make demo` (the gradient-flow study) and `make test`.
# Each creates .venv from constraints.txt (torch pinned to the 2.13.0 CPU build).
# GPU users: create .venv with their own torch first and pass KEEP_TORCH=1.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lstmlab-installed
OUT ?= out/flow
KEEP_TORCH ?=

.PHONY: env test demo bench clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	grep -v $(if $(KEEP_TORCH),'^torch==','^$$') constraints.txt > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e '.[test,tasks,sweep,build]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m lstmlab flow --out $(OUT)

bench: $(STAMP)
	$(PY) -m lstmlab bench

clean:
	rm -rf $(VENV) out build src/*.egg-info
