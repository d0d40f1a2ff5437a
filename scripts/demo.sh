#!/usr/bin/env bash
# The main job: set up (if needed), then a live demo against a local ZooKeeper the demo starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/zklb demo "$@"
