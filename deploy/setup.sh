#!/usr/bin/env bash
# Creates ./.venv and installs the node into it (editable), with the pinned dependencies from
# pyproject.toml. Re-running is cheap: it reinstalls only when pyproject.toml changed.
#   deploy/setup.sh          the node itself
#   deploy/setup.sh --dev    plus the test and lint tools (Playwright for Python drives
#                            Debian's chromium from deploy/system-packages.sh: no
#                            `playwright install`, no browser download)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
python=${PYTHON:-python3}
venv=.venv

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.ichtriage-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)$extras"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # torch and torchvision are pinned in pyproject.toml; pip takes them from the local wheel
    # cache where one is configured, otherwise from the package index.
    "$venv/bin/python" -m pip install --quiet -e ".$extras"
    echo "$want" > "$stamp"
fi
