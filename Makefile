# The two commands the README opens with. Both install everything they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the serving layers (torch-free) and everything ruff reads; mypy checks every package
SERVING := device server protocol runtime link
SOURCES := semlink models $(SERVING) tests deploy

.PHONY: demo test check lint install

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/semlink demo

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy -p semlink

test: lint
	$(VENV)/bin/pytest

# the inner loop: lint and every test not marked slow (about two minutes)
check: lint
	$(VENV)/bin/pytest -m "not slow" -q
