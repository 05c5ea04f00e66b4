# Two commands: `make demo` and `make test`. Everything else is a helper for them.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_CUSTOMERS ?= 2000
DEMO_SEED ?= 7

.PHONY: demo test lint install bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py generate_demo_data --customers $(DEMO_CUSTOMERS) --seed $(DEMO_SEED) --if-empty
	$(PY) manage.py demo_setup
	$(PY) manage.py runserver 127.0.0.1:8000

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL= $(PY) manage.py makemigrations --check --dry-run  # models and migrations agree

test: install lint
	$(VENV)/bin/pytest

bench: install
	@echo "see bench/README.md for each benchmark's command"

clean:
	rm -rf var/ staticfiles/ .pytest_cache .ruff_cache
