# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make serve   install into .venv and run the whole service (API + embedded Redis + a worker)
#   make test    install into .venv (with test extras) and run lint, the import layers, the OpenAPI check and
#                the tests
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install install-test install-bench serve test lint bench bench-all bench-quick openapi clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[lite]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[lite,test,onnx]'
	touch $@

# The Python client (clients/python, httpx only) beside the service: `cnnviz predict ...` needs it.
$(VENV)/.installed-client: clients/python/pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e clients/python
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/pip install -q -e '.[lite,test,bench]'
	# bench/bench_detection.py's D-RISE peer pins matplotlib<3.7, which the signal plots cannot use; its
	# D-RISE module imports only torch and numpy, so it goes in without its pins.
	$(BIN)/pip install -q --no-deps 'vision-explanation-methods==0.1.1'
	touch $@

install: $(VENV)/.installed $(VENV)/.installed-client
install-test: $(VENV)/.installed-test $(VENV)/.installed-client
install-bench: $(VENV)/.installed-bench

serve: install
	$(BIN)/cnnviz serve

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: install-test lint
	$(BIN)/python -m pytest -q

# The speed targets (docs/benchmarks.md, speed-targets), from fresh processes.
bench: install-bench
	$(BIN)/python bench/bench_speed.py --readme

# Every bench script, each rewriting its block(s) of README.md and docs/*.md (bench/run_all.py; sized for a
# quiet 2-core machine). `make bench-quick` checks every script end to end with fewer runs.
bench-all: install-bench
	$(BIN)/python bench/run_all.py --readme

bench-quick: install-bench
	$(BIN)/python bench/run_all.py --quick --readme

openapi: install
	$(BIN)/python -m service.openapi_export > openapi/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
