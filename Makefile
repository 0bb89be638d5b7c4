PY ?= python3

.PHONY: setup test unit integration lint bench

setup:
	bash scripts/setup.sh

test: lint
	$(PY) -m pytest -q -p no:cacheprovider tests

unit:
	$(PY) -m pytest -q tests/unit

integration:
	$(PY) -m pytest -q tests/integration

lint:
	$(PY) -m ruff check kasou tests bench
	$(PY) -m mypy

bench:
	$(PY) bench/run.py
