#!/usr/bin/env bash
# The whole test suite on a fresh machine: Debian packages, the virtualenv, lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/system-packages.sh
deploy/setup.sh --dev
export TCP_NODELAY=1
.venv/bin/ruff check node ml storage tests
.venv/bin/mypy
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
