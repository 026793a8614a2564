# af2cpu set-up and everyday tasks. `make demo` and `make test` work on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch only, e.g. TORCH_PIP_ARGS="--index-url <your CPU wheel index>".
TORCH_PIP_ARGS ?=
EXTRAS ?= dev,reference,hpc,notebook
# ColabFold's search code, the oracle of the MMseqs2 protocol's tests (with the reference extra). Installed
# without its dependencies: colabfold 1.6.3 pins biopython<1.86, pandas<3 and importlib-metadata<9, which
# the reference extra's pins conflict with, and its search module needs none of them (docs/reference.md).
COLABFOLD_VERSION ?= 1.6.3
OMP_NUM_THREADS ?= 2
export OMP_NUM_THREADS

.PHONY: setup tools venv demo demo-complex test test-avx2 test-ipex lint clean-venv

setup: tools venv

# HMMER, HH-suite, Kalign and MMseqs2: installed with apt-get when missing and we are root; otherwise we say what to install.
tools:
	@scripts/install_tools.sh

venv: $(VENV)/.installed

# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	case ",$(EXTRAS)," in *,reference,*) $(BIN)/python -m pip install --quiet --no-deps colabfold==$(COLABFOLD_VERSION);; esac
	touch $@

demo: setup
	VENV=$(VENV) scripts/demo.sh

# The haemoglobin alpha/beta dimer with AlphaFold-Multimer (chains paired by species on the mini databases).
demo-complex: setup
	VENV=$(VENV) scripts/demo.sh complex

test: setup
	$(BIN)/python -m pytest -q -rs tests

# The same tests as on an AVX2-only CPU, run on a CPU with AVX512: scripts/avx2only/run masks AVX512,
# AVX512-BF16 and AMX from every library (CPUID faulting; needs gcc and the CPU's cpuid_fault flag).
# Not part of `make test` (it runs the whole suite again).
test-avx2: setup
	scripts/avx2only/run $(BIN)/python -m pytest -q -rs tests

# The optional ipex back end (runtime.backend=ipex), verified in its own venv: intel-extension-for-pytorch
# was archived upstream, and its last release needs torch 2.8 exactly. torch 2.8.0 from PyPI is the CUDA
# build (several GB of nvidia-* packages, which it needs even to import); give TORCH_PIP_ARGS an index
# with the CPU build to avoid them. Runs the model's fidelity tests (DeepMind's reference and the bf16
# bounds) with --backend=ipex, then a small bench, native and ipex side by side. Not part of `make test`.
IPEX_VENV ?= .venv-ipex
IPEX_VERSION ?= 2.8.0
IPEX_TORCH_VERSION ?= 2.8.0
IPEX_TESTS ?= tests/test_model_trunk.py tests/test_model_structure.py tests/test_model_embeddings.py \
	tests/test_model_empty_rows.py tests/test_model_precision.py tests/test_model_whole.py
IPEX_BENCH ?= --lengths 64 --blocks 4 --precisions fp32 auto --no-reference

$(IPEX_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(IPEX_VENV)
	$(IPEX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(IPEX_VENV)/bin/python -m pip install --quiet torch==$(IPEX_TORCH_VERSION) $(TORCH_PIP_ARGS)
	echo "torch==$(IPEX_TORCH_VERSION)" > $(IPEX_VENV)/torch-pin.txt
	$(IPEX_VENV)/bin/python -m pip install --quiet -c $(IPEX_VENV)/torch-pin.txt \
		intel-extension-for-pytorch==$(IPEX_VERSION) -e ".[dev,reference]"
	touch $@

test-ipex: $(IPEX_VENV)/.installed
	$(IPEX_VENV)/bin/python -m pytest -q -rs --backend=ipex $(IPEX_TESTS)
	$(IPEX_VENV)/bin/af2cpu bench $(IPEX_BENCH) --backends native ipex --out $(IPEX_VENV)/bench

lint: venv
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV) $(IPEX_VENV)
