#!/usr/bin/env bash
# Builds the documentation site into ./site with mkdocs in strict mode: a broken link, a page missing
# from the nav or a docstring the API reference cannot render fails the build.
# --no-setup skips scripts/setup.sh (scripts/test.sh has just run it). Other arguments go to mkdocs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-setup" ]; then
  shift
else
  bash scripts/setup.sh
fi
NO_MKDOCS_2_WARNING=1 exec .venv/bin/mkdocs build --strict --quiet "$@"
