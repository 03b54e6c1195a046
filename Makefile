# The two commands the README opens with. Both install everything they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the serving layers (torch-free) and everything ruff reads; mypy checks every package
# (tools/typecheck.py: the folders are mapped into semlink by the packaging, which mypy cannot read)
SERVING := device server protocol runtime link
SOURCES := semlink models $(SERVING) tests deploy tools

.PHONY: demo test check lint install

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev,bench]'
	$(PY) tools/typecheck.py --tree-only  # build/typecheck: the package as mypy sees it
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/semlink demo

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(PY) tools/typecheck.py

# Tests in two passes: first on every core (pytest-xdist, one worker per core, each test module
# on one worker so its process stack starts once, in collection order: tests/conftest.py puts the
# longest modules first, where xdist would start the modules with the most tests first), then
# alone the few marked serial, which measure time or CPU share (tests/conftest.py says which).
PARALLEL := -n auto --dist loadfile --no-loadscope-reorder

# Both passes share one folder for the run (tests/conftest.py's SEMLINK_TEST_SHARED): what the
# suite builds once a run (the tiny models' repository, the wheel) is built once.
TWO_PASSES = shared=$$(mktemp -d) && trap 'rm -rf "$$shared"' EXIT && export SEMLINK_TEST_SHARED=$$shared &&

test: lint
	$(TWO_PASSES) $(VENV)/bin/pytest $(PARALLEL) -m "not serial" && $(VENV)/bin/pytest -m serial

# the inner loop: lint and every test not marked slow
check: lint
	$(TWO_PASSES) $(VENV)/bin/pytest $(PARALLEL) -m "not slow and not serial" -q \
		&& $(VENV)/bin/pytest -m "serial and not slow" -q
