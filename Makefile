# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use (a few minutes:
# torch is large) and reuse it afterwards; the venv is rebuilt only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv test demo lint format clean-demo

help:
	@echo "make demo    generate synthetic data, train, evaluate and infer with every bundle; print a results table"
	@echo "make test    run the test suite (the command CI runs)"
	@echo "make lint    ruff lint and format check"
	@echo "make format  ruff format and safe fixes"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-demo:
	rm -rf work_dirs/demo
