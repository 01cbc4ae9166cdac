# The two Quick start commands are `make up` and `make test`; both set the machine up first.
.PHONY: setup up serve test test-fast gen check lint bench clean

setup:
	@scripts/setup.sh

up: setup
	.venv/bin/powerx up

serve: setup
	.venv/bin/powerx serve

test: setup
	.venv/bin/python -m pytest -q

gen: setup
	.venv/bin/python scripts/gen.py

check: setup
	scripts/check.sh

bench: setup
	.venv/bin/python -m tests.bench.run_all

clean:
	rm -rf .venv node_modules .powerx .pytest_cache .mypy_cache .ruff_cache
