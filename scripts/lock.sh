#!/usr/bin/env bash
# Regenerate the two locks from pyproject.toml's ranges with pip-compile (pip-tools), with hashes:
#   requirements.lock       the runtime closure (what the Dockerfile and a production install use)
#   requirements-test.lock  the runtime closure plus the `test` extra (what scripts/bootstrap.sh installs)
# Versions already in a lock are kept; `scripts/lock.sh --upgrade` (or --upgrade-package NAME) moves them.
# Run it after changing dependencies in pyproject.toml; commit the locks with the change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TOOLS=.local/lock-venv
PIP_TOOLS_VERSION=7.6.2
if [[ ! -x "$TOOLS/bin/pip-compile" ]]; then
    "$PY" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check "pip-tools==$PIP_TOOLS_VERSION"
fi
common=(--quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links "$@")
"$TOOLS/bin/pip-compile" "${common[@]}" --output-file requirements.lock pyproject.toml
# The test lock starts from the runtime pins, so the two never disagree on a shared package.
[[ -f requirements-test.lock ]] || cp requirements.lock requirements-test.lock
"$TOOLS/bin/pip-compile" "${common[@]}" --extra test --constraint requirements.lock \
    --output-file requirements-test.lock pyproject.toml
