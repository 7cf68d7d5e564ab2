# guardrails — every target sets itself up: a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCHSTAMP := $(VENV)/.installed-bench-stamp
RUNSTAMP := $(VENV)/.installed-run-stamp
CONFIG ?= config/paper.toml
DURATION ?= 600
SEED ?=

.PHONY: setup run test bench lint chaos clean browser example

# Three stamps: `make run` installs the runtime dependencies only; `make test`, `lint` and
# `chaos` add the dev tools (.[dev]); `make bench` adds the other Redis clients it compares
# (.[dev,bench]). Each is redone when pyproject.toml changes.
$(RUNSTAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "guardrails needs Python 3.11+, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUNSTAMP)

$(STAMP): $(RUNSTAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(BENCHSTAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCHSTAMP)

setup: $(STAMP)

## make run — the example strategies on the exchange simulator over HTTP (one per-user daemon,
## shared with a `guardrails run --standby` in another terminal) with an embedded Redis, until Ctrl-C.
run: $(RUNSTAMP)
	$(BIN)/guardrails run --config $(CONFIG) --dashboard

## make example — examples/plain_bot.py (ccxt, no guardrails), then the same bot guarded
## (examples/guarded_bot.py), against the Binance-protocol simulator.
example: $(RUNSTAMP)
	$(BIN)/python examples/run.py

## make test — the whole suite, against redis-server processes the tests start themselves.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -ra

## Headless Chromium for the dashboard test (Debian's package), installed when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian chromium for the dashboard browser test"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

bench: $(BENCHSTAMP)
	$(BIN)/python -m bench

chaos: $(STAMP)
	$(BIN)/python -m guardrails.chaos --duration $(DURATION) $(if $(SEED),--seed $(SEED),) $(if $(REDIS),--redis $(REDIS),)

lint: $(STAMP)
	$(BIN)/ruff check guardrails strategies tests bench
	$(BIN)/mypy --strict guardrails

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
