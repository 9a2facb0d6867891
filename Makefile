# Two commands on a fresh machine: `make bench` (the main job) and `make test` (everything).
# Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bench test lint benchmarks clean test-django6

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

# The Django backends on Django 6.x, in a venv of their own (Django 6 needs Python 3.12+;
# the main venv keeps Django 5.2 LTS). mysqlclient builds from source (libmariadb-dev,
# pkg-config). psycopg_pool and tblib: for tools/django_differential.py under Django 6.
# python3.12 on PATH, else pyenv's newest 3.12
PYTHON312 ?= $(shell command -v python3.12 >/dev/null 2>&1 && python3.12 -c 1 2>/dev/null \
	&& echo python3.12 || echo "$$(pyenv prefix "$$(pyenv latest 3.12)" 2>/dev/null)/bin/python3")
DJ6_VENV ?= .venv-dj6
DJ6_BIN := $(DJ6_VENV)/bin

$(DJ6_VENV)/.dj6: pyproject.toml
	$(PYTHON312) -m venv $(DJ6_VENV)
	$(DJ6_BIN)/python -m pip install -q --upgrade pip
	$(DJ6_BIN)/python -m pip install -q -e '.[django,psycopg,psycopg2,pymysql,mysqlclient]' \
		'Django>=6,<7' 'pytest>=8' 'pytest-asyncio>=0.23' 'hypothesis>=6.100' \
		'psycopg_pool>=3.2' tblib
	touch $@

test-django6: $(DJ6_VENV)/.dj6
	$(DJ6_BIN)/python -c 'import django; assert django.VERSION[0] == 6, django.__version__'
	$(DJ6_BIN)/pytest -p no:cacheprovider tests/integrations/django $(ARGS)

clean:
	rm -rf $(VENV) $(DJ6_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
