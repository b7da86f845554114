#!/usr/bin/env bash
# Installs everything the project needs from its own files, starts the local services the
# tests use when they are not running, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[convert,dev]'
# The server's install brings the SDK (client_sdk/, distribution modeldrop-sdk) as a copy;
# make it editable so the tests, and any server process they start, run the checkout's SDK.
.venv/bin/python -m pip install -q --no-deps -e ./client_sdk

bash scripts/services.sh
bash scripts/install-sandbox.sh  # the tests require the full converter sandbox
bash scripts/install-chromium.sh  # the dashboard tests drive a real Chromium (tests/browser.py)

# Lint first (ruff, configured in pyproject.toml): an unclean tree fails the run.
.venv/bin/python -m ruff check registry client_sdk tests bench examples conformance scripts deploy

mkdir -p test-artifacts
set +e
.venv/bin/python -m pytest -q -ra -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
