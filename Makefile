# Two commands on a fresh machine (Python >= 3.11): `make search` and `make test` each create .venv and
# install requirements.txt first; a second run skips that (the stamp is newer than requirements.txt).
#   make search ARGS="--budget tiny"     extra flags for python -m search
#   make test ARGS="-k inspector"        extra flags for pytest
#   make lint / make format              ruff (CI runs make lint)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup search test lint format

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

search: $(STAMP)
	$(PY) -m search $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
