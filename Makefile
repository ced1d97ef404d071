# tokprob: `make run` sets up and runs the encoding analysis, `make test` runs the tests.
#
# torch is installed first and pinned (TORCH), so that the dependency resolver never pulls
# a multi-gigabyte CUDA build onto a CPU machine by accident. On a CPU machine outside
# this environment, `make run TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the
# small CPU build; on a GPU machine the default takes PyPI's CUDA build.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run install test lint bench clean

run: $(STAMP)
	$(BIN)/tokprob run encoding $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@echo "tokprob: creating $(VENV) (a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "tokprob: installing $(TORCH)"
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	@echo "tokprob: installing tokprob and its dependencies (constraints.txt)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV)
