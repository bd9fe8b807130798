# The two commands of the README. Both do all set-up first (scripts/setup.sh).
.PHONY: run test setup
PY := .venv/bin/python

setup:
	@scripts/setup.sh

run: setup
	@$(PY) main.py $(ARGS)

test: setup
	@scripts/test.sh $(ARGS)
