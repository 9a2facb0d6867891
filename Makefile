# Two commands on a fresh machine: `make bench` (the main job) and `make test` (everything).
# Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bench test lint benchmarks clean test-versions test-sa20

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.cli: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[cli]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.cli

bench: $(VENV)/.cli
	$(BIN)/millpond bench $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(ARGS)

benchmarks: $(VENV)/.dev
	$(BIN)/python benchmarks/run_all.py

# `make test-versions`: what `make test` leaves out. `make test` runs everything on .venv
# (Python 3.11, SQLAlchemy 2.1); here Python 3.12 and 3.13 each run MATRIX_TESTS, and Python
# 3.11 with SQLAlchemy 2.0 runs the SQLAlchemy tests. Each has its own venv, built once;
# .ci/find-python finds the interpreters (or says it cannot).
OTHER_PYTHONS := 3.12 3.13
# the tests where the Python version matters (asyncio's cancellation, tracing, sqlite3, the
# frameworks); left out for time: the fault scenarios, real-server, security, worker, bench and
# compat suites, which test the servers' side more than the interpreter's
MATRIX_TESTS := tests/test_architecture.py tests/test_signal_safety.py tests/contract \
	tests/core tests/drivers tests/drivers_async tests/asyncpool tests/integrations
# the bench's QueuePool mode is SQLAlchemy code too
SA20_TESTS := tests/integrations/test_sqlalchemy.py \
	tests/cli/test_bench_cli.py::test_postgresql_against_the_peers \
	tests/cli/test_bench_cli.py::test_mariadb_against_the_peers
SA_VERSION := import sqlalchemy; print(sqlalchemy.__version__)

# pattern-made venvs are not intermediate files: keep them between runs
.PRECIOUS: .venv-%/bin/python .venv-%/.test

.venv-%/bin/python:
	py="$$(.ci/find-python $(if $(filter sa20,$*),3.11,$*))" && "$$py" -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip

.venv-sa20/.test: pyproject.toml Makefile | .venv-sa20/bin/python
	.venv-sa20/bin/python -m pip install -q -e '.[test-base,psycopg,psycopg2,pymysql,mysql,asyncpg]' \
		'SQLAlchemy[asyncio]>=2.0,<2.1'
	touch $@

.venv-%/.test: pyproject.toml Makefile | .venv-%/bin/python
	.venv-$*/bin/python -m pip install -q -e '.[test-matrix]'
	touch $@

test-versions: $(OTHER_PYTHONS:%=test-py%) test-sa20

test-py%: .venv-%/.test
	@echo "== Python $*, SQLAlchemy $$(.venv-$*/bin/python -c '$(SA_VERSION)')"
	.venv-$*/bin/pytest $(MATRIX_TESTS) $(ARGS)

test-sa20: .venv-sa20/.test
	@sa=$$(.venv-sa20/bin/python -c '$(SA_VERSION)') && echo "== Python 3.11, SQLAlchemy $$sa" \
		&& case "$$sa" in 2.0.*) ;; *) echo "expected SQLAlchemy 2.0.x in .venv-sa20" >&2; exit 1;; esac
	@if [ -x $(BIN)/python ]; then sa=$$($(BIN)/python -c '$(SA_VERSION)') && case "$$sa" in \
		2.0.*) echo "$(VENV) has SQLAlchemy $$sa: make test would test 2.0 twice, not 2.1" >&2; \
		exit 1;; esac; fi
	.venv-sa20/bin/pytest $(SA20_TESTS) $(ARGS)

clean:
	rm -rf $(VENV) .venv-3.12 .venv-3.13 .venv-sa20 .pytest_cache .mypy_cache .ruff_cache .hypothesis
