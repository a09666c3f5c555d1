# The two commands a user needs: `make reproduce` and `make test`.
# Only Python 3.11+ and the package registries are required.

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
# CPU build by default; on a CUDA machine install your torch first (same version) and it is kept.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.dpmed-installed

.PHONY: install reproduce test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores 1 --report results/report.html

lint: $(STAMP)
	$(BIN)/snakemake --lint --cores 1

# Unit tests in parallel; then the workflow and SLURM tests in one process, because they share
# one run of the whole workflow on config/tiny.yaml (a session fixture).
test: $(STAMP)
	$(BIN)/snakemake --lint --cores 1
	$(BIN)/pytest -q -n 2 -m "not workflow and not slurm"
	$(BIN)/pytest -q -m "workflow or slurm"

clean:
	rm -rf results logs .snakemake
