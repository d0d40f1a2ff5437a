#!/usr/bin/env bash
# The test command: set up (if needed), lint, type-check, build the docs site (strict), then run the
# whole suite against a real ZooKeeper ensemble that the tests start themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
code=(src tests benchmarks examples)
.venv/bin/ruff check "${code[@]}"
.venv/bin/ruff format --check "${code[@]}"
.venv/bin/mypy
bash scripts/docs.sh --no-setup   # the documentation site, strict: broken links fail
.venv/bin/python -m pytest "$@"
