# The two commands of the README's quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# The lock is written by uv (only `make upgrade` needs it), kept in a virtualenv of its own.
UV_VERSION := 0.13.8
TOOLS := .tools

.PHONY: run test lint setup clean bench reliability upgrade

# Exactly the versions in the lock, checked against their hashes; then the project itself,
# built with the locked setuptools (no isolated build environment that would fetch its own;
# its notice about editable installs is silenced).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m webapp.devserver

lint: $(STAMP)
	$(BIN)/python validate_machines.py machines/
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# Every figure with its ratio, on SQLite and PostgreSQL; e.g. make bench BENCH_ARGS="--repeat 3"
# for three runs summarised as min and median (see bench/benchmark.py --help).
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python bench/benchmark.py $(BENCH_ARGS)

reliability: $(STAMP)
	$(BIN)/python reliability/report.py

# The state diagrams of docs/diagrams/, drawn from machines/ by the console's own renderer (a test
# fails when they are out of date).
.PHONY: diagrams
diagrams: $(STAMP)
	$(BIN)/draw-diagrams machines docs/diagrams

# The console's screenshots in docs/screenshots/ (the type page and the dry-run page of vehicles),
# saved by its browser tests on SQLite.
.PHONY: screenshots
screenshots: $(STAMP)
	PARTICIPANTS_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q \
		tests/test_console_browser.py -k "sqlite and (type_page or dry_run)"

# Refresh the lock to the newest versions pyproject.toml allows, then run the whole suite on
# them: an upgrade is a deliberate change, reviewed as a diff of requirements.lock.
upgrade:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)
	$(TOOLS)/bin/uv pip compile pyproject.toml requirements-build.in --extra test --universal \
		--python-version 3.11 --generate-hashes --no-header --quiet --upgrade -o $(LOCK)
	rm -f $(STAMP)
	$(MAKE) test

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .pytest_cache .ruff_cache instance
