#!/usr/bin/env bash
# Installs the node into ./.venv and runs it on embedded defaults: SQLite and files under ./var,
# the CPU, the shipped demo model; DICOM on 127.0.0.1:11112 (AE title ICHTRIAGE), the worklist
# page and API on http://127.0.0.1:8080 (log in with `ichtriage admin tokens create ...`).
# Any `ichtriage serve` flag may follow, e.g. deploy/run-node.sh --bind 0.0.0.0 --allow-ae CT1
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do  # help installs nothing: the node's own when it is installed
    [[ "$arg" == "--" ]] && break
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        [[ -x .venv/bin/ichtriage ]] && exec .venv/bin/ichtriage serve --help
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        echo "usage: deploy/run-node.sh [ichtriage serve flags]: the first run installs ./.venv"
        echo "(deploy/setup.sh); then deploy/run-node.sh --help lists every flag"
        exit 0
    fi
done
deploy/setup.sh
exec .venv/bin/ichtriage serve "$@"
