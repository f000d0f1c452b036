#!/usr/bin/env bash
# Create .venv, the development environment of `make demo` and `make test`: the locked runtime set plus the
# test extra (requirements-test.lock, a superset of requirements.lock), every file checked against its hash,
# then this project itself (editable). Production installs use requirements.lock alone (see the Dockerfile).
# Safe to run again: it does nothing when neither lock nor pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LOCK=requirements-test.lock
STAMP=.venv/.installed
if [[ -f "$STAMP" && "$STAMP" -nt "$LOCK" && "$STAMP" -nt requirements.lock && "$STAMP" -nt pyproject.toml ]]; then
    exit 0
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "rollback-bot needs Python 3.11 or newer ($PY is $("$PY" -V 2>&1))" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            echo "installing python3-venv with apt-get" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PY" -m venv .venv
        else
            echo "python3 -m venv failed: install the python3-venv package" >&2
            exit 1
        fi
    fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r "$LOCK"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>/dev/null \
    || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
touch "$STAMP"
