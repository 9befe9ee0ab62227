# Two commands on a fresh machine (Python >= 3.11): `make search` and `make test` each create .venv, install
# requirements.txt and then the kit itself (editable: the mnist-challenge and mnist-search commands); a second
# run skips that (the stamp is newer than requirements.txt and pyproject.toml).
#   make search                          the staged search under the assignment's rules (--budget assignment)
#   make search ARGS="--budget tiny"     extra flags for mnist-search (a later --budget wins)
#   make test ARGS="-k inspector"        extra flags for pytest
#   make lint / make format              ruff (CI runs make lint)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup search test lint format

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The kit's main job: screen, promote and confirm designs under 20,000 parameters and 19 epochs (SQLite study
# in logs/search/budget-assignment/, resumable: the same command goes on where a stopped one ended).
search: $(STAMP)
	$(PY) -m search --budget assignment $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q --durations=25 $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
