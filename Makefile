# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
# Both create .venv themselves; torch goes in first and pinned (an open range pulls CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: install test demo bench clean gpu-check

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install torch==$(TORCH_VERSION)
	DS_BUILD_OPS=0 $(PY) -m pip install --no-build-isolation deepspeed
	$(PY) -m pip install -e '.[dev,deepspeed]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m ris_dist.demo

# The GPU acceptance run (docs/results/gpu/README.md): needs no venv, only a CUDA machine's python3.
GPU_OUT ?= gpu-check
gpu-check:
	python3 -m ris_dist.bench gpu --out "$(GPU_OUT)"

clean:
	rm -rf $(VENV) runs reports
