#!/usr/bin/env bash
# Installs the Debian packages the test suite talks to: DCMTK (real DICOM clients), dicom3tools
# (dciodvfy), Orthanc (a real PACS), PostgreSQL (the server database), systemd-analyze and
# docker-compose (they check deploy/), and Chromium (the page's browser test; Playwright
# drives it and downloads no browser of its own). Needs root; does nothing when everything
# is there.
set -euo pipefail
need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v Orthanc >/dev/null || need+=(orthanc)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v openssl >/dev/null || need+=(openssl)
# deploy/: systemd-analyze checks the units, docker-compose validates the compose file
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v docker-compose >/dev/null || need+=(docker-compose)
[[ -x /usr/lib/chromium/chromium ]] || need+=(chromium)
((${#need[@]})) || exit 0
if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start their own services; the tests start private instances instead.
for svc in orthanc postgresql; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
    if [[ -x /etc/init.d/$svc ]]; then /etc/init.d/$svc stop >/dev/null 2>&1 || true; fi
done
