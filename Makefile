# Every target runs inside the project environment (scripts/in-env); `make setup` creates it.
IN_ENV := ./scripts/in-env
PYTEST_ARGS ?=
# Test processes (pytest-xdist; a module's tests stay in one process). 0: one process.
PYTEST_WORKERS ?= 2

.PHONY: setup demo test test-fast lint bench

setup:
	./scripts/setup-env

demo: setup
	$(IN_ENV) autorecsys demo

test: setup
	$(IN_ENV) python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

test-fast: setup
	$(IN_ENV) python -m pytest -q -p no:cacheprovider -m "not e2e and not slow" tests

lint: setup
	$(IN_ENV) ruff check .

bench: setup
	$(IN_ENV) autorecsys bench --datasets frappe86k --models fm,deepfm --seeds 2021,2022,2023 \
		--out runs/bench/frappe86k.json
