# Stockade developer tasks. `make test` is the one command CI runs (.ci/run).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test setup check lint unit integration kernel e2e bench bench-quick images crds schemas run services-up services-down

## Set everything up on a fresh machine, then run every check and test.
test: setup check

## Debian packages, the Python venv, and the services the tests use.
setup:
	scripts/setup

## Lint, type-check, run the whole test suite, the end-to-end scenarios and every
## benchmark once, briefly (needs `make setup` once).
check: lint
	scripts/test
	$(MAKE) --no-print-directory e2e
	$(MAKE) --no-print-directory bench-quick

lint:
	$(VENV)/bin/ruff check stockade tests benchmarks e2e e2e/vm/run
	$(VENV)/bin/ruff format --check stockade tests benchmarks e2e e2e/vm/run
	$(VENV)/bin/mypy

unit:
	$(VENV)/bin/pytest tests/unit

integration:
	$(VENV)/bin/pytest tests/integration tests/elastic

kernel:
	$(VENV)/bin/pytest tests/kernel

## The end-to-end scenarios against the whole stack on this machine (root; e2e/README.md),
## each step logged with its time. Their lsm-mode part runs in the VM of tests/kernel.
e2e:
	$(VENV)/bin/pytest e2e -v -p no:cacheprovider -o log_cli=true --log-cli-level=INFO \
		--log-cli-format='%(message)s'

## Every benchmark, in full; rewrites docs/benchmarks.md (root, ~15 min; docs/benchmarks.md).
bench:
	$(PY) benchmarks

## Every benchmark with --quick (seconds each): each runs and writes its figures; none kept.
bench-quick:
	$(PY) benchmarks --quick

## Build the operator and sensor images (the base made once and cached; docs/images.md).
images:
	images/build

## Regenerate crds/ and the chart's copy from the models (unit tests fail when stale).
crds:
	$(VENV)/bin/stockade generate-crds crds
	$(VENV)/bin/stockade generate-crds charts/stockade/crds

## Regenerate docs/bundle.schema.json from the bundle's models (a unit test fails when stale).
schemas:
	$(VENV)/bin/stockade generate-bundle-schema docs/bundle.schema.json

## The main command: the whole loop on this machine (docs/quickstart.md); `stockade down` stops it.
run:
	$(VENV)/bin/stockade up

services-up:
	services/up

services-down:
	services/down
