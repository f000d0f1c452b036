# The two commands of the README. Each does its own set-up and is safe to run again.
.PHONY: demo test stress venv bench clean-local

venv:
	@bash scripts/bootstrap.sh

demo: venv
	.venv/bin/rollback-bot demo

test: venv
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

# The property test of the engine's invariants (tests/core/test_properties.py) with Hypothesis's "stress" profile:
# 2000 examples on each platform world instead of `make test`'s 200. Long (tens of minutes). Prints how many
# examples each world ran and, if an invariant breaks, the steps that break it.
stress: venv
	.venv/bin/python -m pytest -q -p no:cacheprovider --show-capture=no --hypothesis-profile=stress \
		tests/core/test_properties.py $(PYTEST_ARGS)

bench: venv
	.venv/bin/python -m bench

clean-local:
	-.venv/bin/python -m bot.devtools.localpg stop
	rm -rf .local
