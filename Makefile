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

# Tests in two passes: first on every core (pytest-xdist, one worker per core, each test module
# on one worker so its process stack starts once), then alone the few marked serial, which
# measure time or CPU share (tests/conftest.py says which and why).
PARALLEL := -n auto --dist loadfile

test: lint
	$(VENV)/bin/pytest $(PARALLEL) -m "not serial"
	$(VENV)/bin/pytest -m serial

# the inner loop: lint and every test not marked slow
check: lint
	$(VENV)/bin/pytest $(PARALLEL) -m "not slow and not serial" -q
	$(VENV)/bin/pytest -m "serial and not slow" -q
