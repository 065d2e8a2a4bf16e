# Interpretability & Visualization: the two commands are `make lab` and `make test`.
# Every target creates .venv on first use (and refreshes it when requirements change).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KERNEL := interp-course
# JupyterLab refuses to start as root (as in many containers) unless told it may
LAB_FLAGS ?= --no-browser $(if $(filter 0,$(shell id -u)),--allow-root)
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
export PYTHONHASHSEED := 0

.PHONY: lab kernel reset test test-portable execute lint unit notebooks run data bench bench-full clean
# The notebooks that execute/test-portable work on (all of them unless named: NB=notebooks/03_*.ipynb)
NB ?= notebooks
# Kernel and thread settings test-portable checks, as ATEN_CPU_CAPABILITY:OMP_NUM_THREADS
PORTABLE ?= default:1 avx2:4

# TORCH_INDEX: a wheel index to take torch and torchvision from instead of PyPI, e.g. PyTorch's
# CPU-only builds (README, "Two commands"); everything else still comes from requirements.txt
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip install --quiet --no-compile
# Python writes each module's bytecode (.pyc) the first time any process imports it, even where the
# environment says not to (PYTHONDONTWRITEBYTECODE): byte-compiling all 6 GB of packages at install
# took 40 s on 2 cores, and importing without bytecode costs every process about 17 s
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
# --no-compile: pip would byte-compile the 6 GB of packages on one core (install 154 s with it,
# 74 s without); each module is compiled instead when it is first imported (unexport, above)
ifneq ($(TORCH_INDEX),)
	$(PIP) --index-url $(TORCH_INDEX) $$(grep -E '^torch(vision)?=' requirements.txt | sed 's/===*/==/')
	grep -v -E '^torch(vision)?=' requirements.txt > $(VENV)/requirements-no-torch.txt
	$(PIP) -r $(VENV)/requirements-no-torch.txt
else
	$(PIP) -r requirements.txt
endif
# requirements-nodeps.txt: reference libraries whose declared dependencies we do not need
# (dictionary-learning declares nnsight, wandb, datasets...; notebook 14 uses two of its modules)
	$(PIP) --no-deps -r requirements-nodeps.txt
	$(PIP) --no-deps --no-build-isolation -e .
	@touch $(STAMP)

## make lab: set everything up, register the course kernel, make your own copy of the notebooks
## (my_notebooks/, ignored by git: run and save them freely) and start JupyterLab on it
lab: kernel
	@$(BIN)/python -m helpers.workspace --lab-settings
	@echo "Starting JupyterLab on my_notebooks/: open the URL printed below."
	$(BIN)/jupyter lab $(LAB_FLAGS) --notebook-dir=my_notebooks

## make kernel: register the course's kernel, "Python (interpretability course)", which every
## notebook asks for (for VS Code or a Jupyter of your own)
kernel: $(STAMP)
	@$(BIN)/python -m ipykernel install --user --name $(KERNEL) \
		--display-name "Python (interpretability course)" >/dev/null
	@echo "Kernel '$(KERNEL)' registered."

## make reset NB=04: replace your copy of one notebook with the course's current version (yours
## moves to my_notebooks/.old/)
reset: $(STAMP)
	@$(BIN)/python -m helpers.workspace --reset $(NB)

# JOBS: worker processes for the tests (pytest-xdist); each notebook runs whole in one worker.
# Each worker's PyTorch gets one thread, so that the workers share the cores instead of fighting
# over them (every figure the notebooks print is the same at any thread count: make test-portable).
JOBS ?= 2
XDIST := $(if $(filter-out 0 1,$(JOBS)),-n $(JOBS) --dist loadfile)
WORKER_ENV := $(if $(XDIST),OMP_NUM_THREADS=1)

## make test: lint, then the unit tests and every notebook under nbval, in one run shared by
## JOBS worker processes (make unit / make notebooks run one part)
test: $(STAMP) lint
	$(WORKER_ENV) $(BIN)/pytest $(XDIST) $(NBVAL) tests notebooks

lint: $(STAMP)
	$(BIN)/ruff check helpers tests benchmarks notebooks conftest.py

unit: $(STAMP)
	$(WORKER_ENV) $(BIN)/pytest $(XDIST) tests

notebooks: $(STAMP)
	$(WORKER_ENV) $(BIN)/pytest $(XDIST) $(NBVAL) notebooks

## make test-portable: unit tests and notebooks under other PyTorch kernels and thread counts, as a
## learner's machine would run them (run it before committing a notebook)
test-portable: $(STAMP)
	@for cfg in $(PORTABLE); do \
		cap=$${cfg%%:*}; threads=$${cfg##*:}; \
		echo "== ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads"; \
		ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads $(BIN)/pytest -q tests || exit 1; \
		ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads $(BIN)/pytest -q $(NBVAL) $(NB) || exit 1; \
	done

## make execute: sync each notebook with its .py twin in notebooks/py/ (the newer wins), re-execute
## it top to bottom from a fresh kernel, in place, drop its widget state (static viewers then show
## the explorer's snapshot: helpers/notebook_tools.py), then sync the twin. COURSE_STRICT=1 makes
## helpers.report refuse a printed figure that round-off could move.
execute: $(STAMP)
	@for nb in $(if $(filter notebooks,$(NB)),notebooks/[0-9][0-9]_*.ipynb,$(NB)); do \
		echo "== $$nb"; \
		$(BIN)/jupytext --quiet --sync $$nb || exit 1; \
		COURSE_STRICT=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.record_timing=False $$nb || exit 1; \
		$(BIN)/python -m helpers.notebook_tools $$nb || exit 1; \
		$(BIN)/jupytext --quiet --sync $$nb || exit 1; \
	done

## make run: execute every notebook headless into build/, with a timing table
run: $(STAMP)
	$(BIN)/python -m helpers.run_notebooks notebooks build

## make data: rebuild the shipped checkpoints, DermNet (shortcut, debiased, random labels) and DermViT
## (about 15 minutes on 2 cores),
## then the sparse autoencoders that read them (notebook 14, a few minutes)
data: $(STAMP)
	$(BIN)/python -m helpers.train
	$(BIN)/python -m helpers.sae

## make bench: our helpers against the libraries, as time ratios, then how cost grows (build/bench/)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## make bench-full: the default batches on resnet50 and vit_b_16 at 224 px, against a sweep (time, memory)
bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.bench_full_size

clean:
	rm -rf build $(VENV)
