# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
# Both create .venv themselves; torch goes in first and pinned (an open range pulls CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Extra pytest arguments, e.g. `make test PYTEST_ARGS=-rs` (.ci/run lists every skip that way).
PYTEST_ARGS ?=

.PHONY: install lint test demo bench clean gpu-check

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install torch==$(TORCH_VERSION)
	DS_BUILD_OPS=0 $(PY) -m pip install --no-build-isolation deepspeed
	$(PY) -m pip install -e '.[dev,deepspeed]'
	touch $@

install: $(VENV)/.installed

# ruff's rule set is in pyproject.toml ([tool.ruff]); docs/development.md explains it
lint: install
	$(PY) -m ruff check .

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) -m ris_dist.demo

# The GPU acceptance run (docs/results/gpu/README.md): needs no venv, only a CUDA machine's python3.
GPU_OUT ?= gpu-check
gpu-check:
	python3 -m ris_dist.bench gpu --out "$(GPU_OUT)"

clean:
	rm -rf $(VENV) runs reports
