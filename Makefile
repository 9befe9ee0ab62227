# Two commands on a fresh machine (Python >= 3.11): `make search` and `make test` each create .venv and install the
# kit with every extra, editable, at the versions constraints.txt pins (the mnist-challenge and mnist-search
# commands); a second run skips that (the stamp is newer than constraints.txt and pyproject.toml).
#   make search                          the staged search under the assignment's rules (--budget assignment)
#   make search ARGS="--budget tiny"     extra flags for mnist-search (a later --budget wins)
#   make test ARGS="-k inspector"        extra flags for pytest
#   make demo                            the whole staged search at toy scale, then its winner's notebook (minutes)
#   make lint / make format              ruff (CI runs make lint)
#   make docs                            the documentation site, built strictly (CI runs it)
#   make lock                            rewrite constraints.txt from what .venv holds (after a deliberate upgrade)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup search demo test lint format docs lock

setup: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt setuptools
	$(PY) -m pip install -q -c constraints.txt --no-build-isolation -e ".[dev]"
	touch $(STAMP)

# The kit's main job: screen, promote and confirm designs under 20,000 parameters and 19 epochs (SQLite study
# in logs/search/budget-assignment/, resumable: the same command goes on where a stopped one ended).
search: $(STAMP)
	$(PY) -m search --budget assignment $(ARGS)

# The whole job at toy scale, in minutes: screening, promotion and confirmation on 5,000 training images, then the
# winner's notebook exported, executed and graded (study and notebook in logs/demo/budget-demo/, not committed).
demo: $(STAMP)
	$(PY) -m search --budget demo --logs logs/demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q --durations=25 $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The documentation site (docs/*.md, mkdocs.yml) into .site/; strict: a broken link or #anchor fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

lock: $(STAMP)
	@{ sed -n '1,3p' constraints.txt; echo "setuptools==$$($(PY) -c 'import setuptools; print(setuptools.__version__)')"; \
	   $(PY) -m pip freeze --exclude-editable | grep -vi '^mnist'; } > constraints.txt.new && mv constraints.txt.new constraints.txt
