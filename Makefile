# The two commands of the README. Both create the environment first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench env clean

demo: $(STAMP)  ## run the default comparison suite on the simulated model and write a report
	$(BIN)/coordlab demo

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)  ## print the benchmarks (ratios measured side by side in one run)
	$(BIN)/python bench/simulator_overhead.py

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV)
