# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.grulab-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,onnx,data]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m grulab lab run all --quick --jobs 2

lint: $(STAMP)
	$(PY) -m ruff check src tests

test: lint
	$(PY) -m pytest -q -n 2 --dist loadgroup
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q -m nojit tests/engine

bench: $(STAMP)
	$(PY) -m grulab bench --update-readme README.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
