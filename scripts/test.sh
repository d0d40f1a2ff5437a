#!/usr/bin/env bash
# The test command: set up (if needed), lint, type-check, then run the whole suite against a real
# ZooKeeper ensemble that the tests start themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
