# Every target works on a fresh machine with Python 3.11+: the venv is made on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Running needs the package alone; tests, benchmarks and lint need the dev extra too.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: run gateway test bench lint install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

## Start the mock LLM on :8000 and the gateway on :8001 in the foreground; Ctrl-C stops both.
## LOG_FORMAT=json: both log one JSON object per line (MOCK_LOG_FORMAT and APIM_LOG_FORMAT).
run: $(RUN_STAMP)
	@$(if $(LOG_FORMAT),MOCK_LOG_FORMAT=$(LOG_FORMAT) )$(BIN)/llm-mock & mock=$$!; \
	$(if $(LOG_FORMAT),APIM_LOG_FORMAT=$(LOG_FORMAT) )APIM_UPSTREAM_URL=$${APIM_UPSTREAM_URL:-http://127.0.0.1:8000/v1} $(BIN)/apim & apim=$$!; \
	trap 'kill -TERM $$mock $$apim 2>/dev/null; wait $$mock $$apim; exit 0' INT TERM; \
	wait $$mock $$apim

## Start the gateway alone on :8001 (its upstream from APIM_CONFIG or the APIM_* settings).
gateway: $(RUN_STAMP)
	exec $(BIN)/apim

# Three pytest-xdist workers, each running whole test files (a module's processes start once):
# most of the suite's time is waiting (real windows passing, queues timing out, failovers), which
# overlaps well even on two cores (measured: 2 workers 324 s, 3 workers 250 s, serial 563 s).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
