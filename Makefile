# `make demo` and `make test` bootstrap .venv themselves and reuse it when present.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean device-bundle

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ablate demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m bench

# What the GPU machine lacks (no package access there): pycocotools' wheel for its Python 3.12, into device-bundle/
# (ignored by git); carry that folder to the machine and run the printed command there. docs/RUNNING_ON_A_GPU.md.
device-bundle: $(STAMP)
	$(PY) -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux2014_x86_64 \
		--implementation cp -d device-bundle 'pycocotools>=2.0,<2.1'
	@echo "carry device-bundle/ and run there:"
	@echo "  python -m pip install --no-index --no-deps device-bundle/*.whl && python -m bench device --out device-out"

clean:
	rm -rf .pytest_cache build *.egg-info
