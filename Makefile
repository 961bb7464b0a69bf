# virtkit: `make demo` and `make test` are the whole quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := libvirt,docker,postgresql,test

.PHONY: demo test deps venv testbed lint typecheck unit clean

demo: $(BIN)/virtkit
	$(BIN)/virtkit demo

$(BIN)/virtkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

deps:
	scripts/install-deps

venv: deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'

testbed: venv
	scripts/testbed up

lint: venv
	$(BIN)/ruff check virt drivers guest_agent tests bench scripts/*.py
	$(BIN)/mypy

test: testbed lint
	set -a; source .testbed/env; set +a; \
	VIRTKIT_REQUIRE_TESTBED=1 $(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .testbed build *.egg-info
