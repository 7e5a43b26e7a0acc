#!/usr/bin/env bash
# Installs the node into ./.venv and runs it on embedded defaults: SQLite and files under ./var,
# the CPU, the shipped demo model; DICOM on 127.0.0.1:11112 (AE title ICHTRIAGE), the worklist
# page and API on http://127.0.0.1:8080 (log in with `ichtriage admin tokens create ...`).
# Any `ichtriage serve` flag may follow, e.g. deploy/run-node.sh --bind 0.0.0.0 --allow-ae CT1
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
exec .venv/bin/ichtriage serve "$@"
