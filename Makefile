# The two commands of the README. Each does its own set-up and is safe to run again.
.PHONY: demo test venv bench clean-local

venv:
	@bash scripts/bootstrap.sh

demo: venv
	.venv/bin/rollback-bot demo

test: venv
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

bench: venv
	.venv/bin/python -m bench

clean-local:
	-.venv/bin/python -m bot.localpg stop
	rm -rf .local
