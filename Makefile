# The two commands the README opens with. Both install everything they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/semlink demo

lint: $(STAMP)
	$(VENV)/bin/ruff check semlink models device server protocol tests
	$(VENV)/bin/ruff format --check semlink models device server protocol tests
	$(VENV)/bin/mypy device server protocol

test: lint
	$(VENV)/bin/pytest
