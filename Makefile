# Set-up and the README's commands: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
# torch is installed first, on its own: the pinned CPU wheel here, so nothing pulls a multi-GB CUDA build.
# On a GPU machine: `make setup TORCH=torch` takes the CUDA build from PyPI.
TORCH ?= torch==2.13.0
# Weights for the demo: empty = the bundled default model (alae_rt/models/default.safetensors, see its
# MODEL_CARD.md); or any .safetensors / official ALAE .pth, e.g. CHECKPOINT=model_157.pth.
CHECKPOINT ?=
FACES ?= $(SHARED)/data/faces128
DIRECTIONS ?= $(SHARED)/data/principal_directions
OUT ?= out/demo

.PHONY: setup demo test test-all lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,train]"
	$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA ' + str(torch.version.cuda) + ')')"
	touch $@

demo: setup
	$(VENV)/bin/alae-rt demo $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") --faces "$(FACES)" --directions-dir "$(DIRECTIONS)" -o "$(OUT)"

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q --runslow

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
