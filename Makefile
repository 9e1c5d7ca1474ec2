# Every target runs inside the project environment (scripts/in-env); `make setup` creates it.
IN_ENV := ./scripts/in-env
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint bench

setup:
	./scripts/setup-env

demo: setup
	$(IN_ENV) autorecsys demo

test: setup
	$(IN_ENV) python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

test-fast: setup
	$(IN_ENV) python -m pytest -q -p no:cacheprovider -m "not e2e and not slow" tests

lint: setup
	$(IN_ENV) ruff check .

bench: setup
	$(IN_ENV) autorecsys bench --datasets frappe86k --models fm,deepfm --seeds 2021,2022,2023 \
		--out runs/bench/frappe86k.json
