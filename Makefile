# The two commands of the README. Each creates .venv on first use and installs everything.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PRESET ?= auto
JOBS ?= 1

.PHONY: reproduce test lint venv lab

# First the data sanity check (raw-pixel baseline on held-out synthetic identities must sit
# well above chance and below saturation), then every notebook at PRESET (auto: gpu if CUDA).
reproduce: $(STAMP)
	$(VENV)/bin/nbface synth --calibrate
	$(VENV)/bin/nbface reproduce --preset $(PRESET) --jobs $(JOBS)

test: $(STAMP) lint
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check nbfacelib tests benchmarks
	$(VENV)/bin/ruff format --check nbfacelib tests benchmarks

venv: $(STAMP)

# JupyterLab on notebooks/, run by the venv's Python, so notebooks get the project's kernel
# (the venv's ipykernel, nbfacelib installed in it) and the widget / plotly extensions.
lab: $(STAMP)
	$(PY) -m jupyterlab --notebook-dir=notebooks

# torch/torchvision are pinned to the wheels this machine's pip finds on local disk;
# on any other machine the same pins come from PyPI.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)
