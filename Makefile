# ticketbot: `make run` starts the bot on the embedded default; `make test` runs lint, types and the whole suite.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PACKAGES := core storage intake bot

.PHONY: run test lint typecheck pytest services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamps re-install when pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/ticketbot db upgrade
	$(BIN)/ticketbot run

# System services the tests talk to: PostgreSQL (started if installed but down) and Dovecot (installed if missing).
services:
	@bash scripts/ensure-postgres.sh
	-@bash scripts/ensure-dovecot.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict $(PACKAGES)

pytest: $(VENV)/.installed-dev services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Each bench prints its figures (README, Performance); see bench/README.md for options.
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.classify
	$(BIN)/python bench/classify_claude.py
	$(BIN)/python bench/learning.py
	$(BIN)/python bench/email_intake.py

# The long runs (docs/faults.md): 3 replicas at 20 requests/s for SOAK_SECONDS (default 1800), then the fault suite
# at the issue's full counts (FAULTS_FULL=1: 5,000 + 2,000 mails over 10 kill rounds, minute-long outages).
.PHONY: soak
soak: $(VENV)/.installed-dev services
	$(BIN)/python scripts/soak.py --seconds $${SOAK_SECONDS:-1800}
	FAULTS_FULL=1 $(BIN)/python -m pytest tests/faults -q -s

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
