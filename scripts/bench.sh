#!/usr/bin/env bash
# The benchmark report: every scenario of benchmarks/report.py in one run against a 3-node ZooKeeper it
# starts itself; prints a table and writes docs/benchmarks.md and its plots (docs/benchmarks/*.png).
# Takes a few minutes. Extra arguments go to report.py (--smoke: tiny sizes, seconds; --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pip install --quiet -e '.[bench]'   # matplotlib, for the plots (not needed by the tests)
cd benchmarks
exec ../.venv/bin/python report.py --out ../docs "$@"
