# virtkit: `make demo` and `make test` are the whole quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := libvirt,docker,postgresql,mysql,test

.PHONY: demo test deps venv testbed lint unit conformance bench soak clean

demo: $(BIN)/virtkit
	$(BIN)/virtkit demo

$(BIN)/virtkit: pyproject.toml
	scripts/install-deps --demo
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
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
	$(BIN)/ruff check .
	$(BIN)/mypy

test: testbed lint
	set -a; source .testbed/env; set +a; \
	VIRTKIT_REQUIRE_TESTBED=1 $(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) --no-print-directory conformance

conformance:
	set -a; source .testbed/env; set +a; \
	VIRTKIT_REQUIRE_TESTBED=1 $(BIN)/python scripts/run-conformance

bench: testbed
	set -a; source .testbed/env; set +a; \
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The larger load and fuzz runs (not in CI): 8 recoverers on 2,000 instances, more examples.
soak: testbed
	set -a; source .testbed/env; set +a; \
	VIRTKIT_SOAK=1 VIRTKIT_FUZZ_SCALE=10 VIRTKIT_REQUIRE_TESTBED=1 $(BIN)/pytest -p no:cacheprovider -s \
	    tests/integration/recovery/test_recover_load.py $(wildcard tests/unit/fuzz) $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .testbed build *.egg-info
