# The two commands of the README. Both create the environment first if it is missing.
# constraints.txt pins the exact versions last checked together (regenerate: make constraints).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench baseline env clean constraints

demo: $(STAMP)  ## run the default comparison suite on the simulated model and write a report
	$(BIN)/coordlab demo

test: $(STAMP)  ## run the test suite (pytest's "no tests collected", exit 5, is reported, not failed)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 0; fi; exit $$rc

bench: $(STAMP)  ## print the benchmarks (ratios measured side by side in one run)
	$(BIN)/python bench/simulator_overhead.py
	$(BIN)/python bench/adapter_overhead.py
	$(BIN)/python bench/runner_throughput.py
	$(BIN)/python bench/report_large.py
	$(BIN)/python bench/reliability.py

baseline: $(STAMP)  ## regenerate the published baseline report under docs/baseline (about 3 minutes)
	rm -f out/baseline.sqlite out/baseline.sqlite-wal out/baseline.sqlite-shm  # a baseline starts from nothing
	$(BIN)/coordlab run --store out/baseline.sqlite --fresh
	$(BIN)/coordlab report --store out/baseline.sqlite --out docs/baseline --command "make baseline"

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV)

constraints: $(STAMP)  ## re-pin constraints.txt from the current environment
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^coordlab' > constraints.txt
