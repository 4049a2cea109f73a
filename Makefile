# Set-up and the README's commands: `make serve-demo` (the main job), `make demo` and `make test`.
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
SERVE_OUT ?= out/serve-demo
SERVE_FACES ?= 8
# pytest-xdist processes for make test (each test runs torch on one thread: see tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: setup demo serve-demo test test-all lint bench-cpu bench-gpu gpu-kit gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,serve,export,train]"
	$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA ' + str(torch.version.cuda) + ')')"
	touch $@

# The official FFHQ directions (DIRECTIONS) are for the official D=512 models: passed with a CHECKPOINT only. The
# bundled model edits along its own principal directions (pc00, pc01; alae_rt/models/directions).
demo: setup
	$(VENV)/bin/alae-rt demo $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)" --directions-dir "$(DIRECTIONS)") --faces "$(FACES)" -o "$(OUT)"

# Start `alae-rt serve` on CHECKPOINT (any free ports on 127.0.0.1, the face editor's too), wait for it to warm up,
# print the editor's URL, make a client round trip on the sample faces (info, reconstruct, generate, mix), then stop
# it with SIGTERM (it drains and exits). SERVE_WAIT=1 keeps it running for the editor until Ctrl-C.
SERVE_WAIT ?=
# The port files go to a temporary folder (removed on exit) and SERVE_OUT is made by the client commands' -o, so a
# server that stops at start (its one-line error: a missing FACES or CHECKPOINT, a port in use) leaves nothing behind.
serve-demo: setup
	@set -e; A="$(VENV)/bin/alae-rt"; run=$$(mktemp -d); \
	$$A serve $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") --port 0 --port-file "$$run/port" \
		--http-port 0 --http-port-file "$$run/http_port" --sample-faces "$(FACES)" --log-format text & pid=$$!; \
	trap 'kill -TERM $$pid 2>/dev/null && wait $$pid; rm -rf "$$run"' EXIT; \
	for i in $$(seq 600); do [ -s "$$run/http_port" ] && break; \
		kill -0 $$pid 2>/dev/null || { rc=0; wait $$pid || rc=$$?; exit $$(( rc ? rc : 1 )); }; sleep 0.1; done; \
	[ -s "$$run/http_port" ] || { echo "serve-demo: the server did not listen within 60 s" >&2; exit 1; }; \
	S="--server 127.0.0.1:$$(cat "$$run/port")"; \
	echo "== face editor: http://127.0.0.1:$$(cat "$$run/http_port")/"; \
	faces=$$(ls "$(FACES)"/*.png | head -n $(SERVE_FACES)); \
	echo "== client health (waits for the warm-up)"; $$A client health --wait 120 $$S; \
	echo "== client info"; $$A client info $$S; \
	echo "== client reconstruct: $(SERVE_FACES) faces from $(FACES)"; $$A client reconstruct $$faces -o "$(SERVE_OUT)/reconstruct" $$S; \
	echo "== client generate"; $$A client generate --seeds 0-7 --noise const -o "$(SERVE_OUT)/generate" $$S; \
	echo "== client mix"; $$A client mix --a $$(echo $$faces | cut -d' ' -f1-2) --b seeds:0-3 -o "$(SERVE_OUT)/mix" $$S; \
	$(if $(SERVE_WAIT),echo "== face editor: http://127.0.0.1:$$(cat "$$run/http_port")/ (Ctrl-C stops)"; wait $$pid;) \
	echo "== SIGTERM: the server drains and stops"

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-all: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --runslow

lint: setup
	$(VENV)/bin/ruff check .

# Benchmarks write JSON, markdown and plots to benchmarks/results/. On a GPU machine whose Python already has
# torch and triton: `make bench-gpu PY=python3` after `pip install --no-deps -e .`.
bench-cpu: setup
	$(VENV)/bin/alae-rt bench --preset ffhq-1024 --batch 1 --device cpu

bench-gpu:
	$(PY) benchmarks/bench_kernels.py
	$(PY) -m alae_rt.cli bench --preset ffhq-1024 --device cuda --batch 1,8,32 --backends eager,compile,triton \
		--dtypes fp32,fp16

# The GPU proof (benchmarks/gpu_check.py, issue 14). `make gpu-kit` here copies what it reads from $(SHARED) into
# $(KIT)/shared (git-ignored; name it in a remote run's carried paths); SERVE_WHEELS=1 also fetches the serving
# packages a bare GPU image lacks, as pure-Python wheels, and the fast image codecs, as compiled wheels for its
# Python (GPU_PYTHON, GPU_PLATFORMS). On the GPU machine, after
# `pip install --no-deps --no-build-isolation -e .`: `make gpu-check PY=python3` (8 minutes at most; it installs
# nothing into that Python, the kit's codec wheels go to $(KIT)/site); `make gpu-check DRY=1` runs the kit's own
# code on the CPU with tiny models.
KIT ?= .gpu-kit
DRY ?=
SERVE_WHEELS ?=
# The GPU machine's Python and platforms, for the compiled codec wheels SERVE_WHEELS=1 carries
GPU_PYTHON ?= 3.12
GPU_PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
# The GPU image's grpcio: grpc's health and reflection packages refuse a grpcio older than their own version
GPU_GRPC ?= 1.84.0
GPU_CHECK_ARGS ?=

gpu-kit:
	rm -rf "$(KIT)/shared"
	mkdir -p "$(KIT)/shared/fixtures" "$(KIT)/shared/data/faces1024" "$(KIT)/shared/data/faces128"
	cp -R "$(SHARED)/fixtures/official" "$(KIT)/shared/fixtures/"
	cp -R "$(SHARED)/data/principal_directions" "$(KIT)/shared/data/"
	cp "$(SHARED)/data/README.md" "$(KIT)/shared/data/"
	for f in $$(ls "$(SHARED)/data/faces1024" | head -n 8); do cp "$(SHARED)/data/faces1024/$$f" "$(KIT)/shared/data/faces1024/"; done
	for f in $$(ls "$(SHARED)/data/faces128" | head -n 8); do cp "$(SHARED)/data/faces128/$$f" "$(KIT)/shared/data/faces128/"; done
	chmod -R u+w "$(KIT)"
	$(if $(SERVE_WHEELS),rm -rf "$(KIT)/wheels" && $(PY) -m pip download --quiet --no-deps --only-binary=:all: -d "$(KIT)/wheels" \
		grpcio-health-checking==$(GPU_GRPC) grpcio-reflection==$(GPU_GRPC) && $(PY) -m pip download --quiet --no-deps --only-binary=:all: \
		--python-version $(GPU_PYTHON) --implementation cp $(foreach p,$(GPU_PLATFORMS),--platform $(p)) \
		-d "$(KIT)/wheels/binary" fpng pyspng simplejpeg)
	@du -sh "$(KIT)" | sed 's/\t/ /; s/$$/ (a remote run carries it: under 64 MiB)/'

gpu-check:
	$(PY) benchmarks/gpu_check.py $(if $(DRY),--dry-run) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
