#!/usr/bin/env bash
# Installs the node as a service: a system user, a virtualenv with the node in it, the
# settings, the data directory and the systemd units (node and stand-alone workers).
# Running it again is safe: the user, the venv and the settings are kept, the units and the
# documentation are brought up to date. See docs/deploy.md.
#
#   deploy/install.sh [--prefix DIR] [--dry-run] [--venv DIR] [--python PYTHON] [--enable]
#
#   --prefix DIR   install under DIR (DIR/opt/ichtriage, DIR/etc/ichtriage, ...) with the
#                  units pointing there; creates no user, changes no owner, calls no systemctl
#   --dry-run      print what would be done, do nothing
#   --venv DIR     use this existing virtualenv (with the node installed) instead of creating
#                  PREFIX/opt/ichtriage/venv
#   --python PY    the interpreter the venv is made with (default: python3, 3.11 or newer)
#   --enable       also `systemctl enable --now ichtriage` (not with --prefix)
#
# Layout:  /opt/ichtriage/venv           the node and its pinned dependencies
#          /opt/ichtriage/docs           deploy.md, conformance.md
#          /etc/ichtriage/ichtriage.toml the settings (kept when present)
#          /var/lib/ichtriage            data_dir: the file store and a SQLite database
#          /etc/systemd/system/ichtriage.service, ichtriage-worker@.service
#          the journal                   the logs (journalctl -u ichtriage)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
prefix="" dry=0 venv="" python=${PYTHON:-python3} enable=0
user=ichtriage
while (($#)); do
    case "$1" in
        --prefix) prefix=$(realpath -m "$2"); shift 2 ;;
        --dry-run) dry=1; shift ;;
        --venv) venv=$(realpath -m "$2"); shift 2 ;;
        --python) python=$2; shift 2 ;;
        --enable) enable=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$prefix" == "/" ]] && prefix=""
real=$([[ -z "$prefix" ]] && echo 1 || echo 0)  # a real system install: user, owners, systemd
opt=$prefix/opt/ichtriage etc=$prefix/etc/ichtriage data=$prefix/var/lib/ichtriage
units=$prefix/etc/systemd/system
venv=${venv:-$opt/venv}

say() { echo "install.sh: $*"; }
run() {  # a command, printed; not run with --dry-run
    echo "+ $*"
    ((dry)) || "$@"
}
render() {  # FILE TARGET MODE: FILE with this installation's paths, written whole or not at all
    echo "+ render $1 > $2"
    ((dry)) && return
    sed -e "s#/opt/ichtriage/venv#@VENV@#g" -e "s#/opt/ichtriage#@OPT@#g" \
        -e "s#/etc/ichtriage#@ETC@#g" -e "s#/var/lib/ichtriage#@DATA@#g" \
        -e "s#@VENV@#$venv#g" -e "s#@OPT@#$opt#g" -e "s#@ETC@#$etc#g" -e "s#@DATA@#$data#g" \
        "$1" > "$2.tmp"
    chmod "$3" "$2.tmp"
    mv "$2.tmp" "$2"
}

if ((real && !dry)) && [[ $(id -u) -ne 0 ]]; then
    echo "install.sh: a system install needs root (or use --prefix DIR / --dry-run)" >&2
    exit 1
fi
if ((!real && enable)); then
    echo "install.sh: --enable needs a system install, not --prefix" >&2
    exit 2
fi

# 1. the system user, who owns the data and runs the services
if ((real)); then
    if getent passwd "$user" >/dev/null; then
        say "user $user exists"
    else
        run useradd --system --user-group --home-dir /var/lib/ichtriage --no-create-home \
            --shell /usr/sbin/nologin --comment "ICH triage node" "$user"
    fi
else
    say "--prefix: no user created; the units name User=$user"
fi

# 2. folders
run install -d -m 0755 "$opt" "$opt/docs" "$units"
run install -d -m 0750 "$etc" "$data"
if ((real)); then
    run chown "root:$user" "$etc"
    run chown "$user:$user" "$data"
fi

# 3. the virtualenv: created and filled once, refilled when the source changed
stamp=$venv/.ichtriage-source
want=$(cd "$src" && { cat pyproject.toml; git ls-files -s 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)
if [[ "$venv" != "$opt/venv" ]]; then
    if [[ ! -x "$venv/bin/ichtriage" ]]; then
        echo "install.sh: --venv $venv has no bin/ichtriage: install the node into it first" >&2
        exit 1
    fi
    say "using the virtualenv $venv as it is"
elif [[ -x "$venv/bin/ichtriage" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    say "virtualenv $venv is up to date"
else
    [[ -x "$venv/bin/python" ]] || run "$python" -m venv "$venv"
    run "$venv/bin/python" -m pip install --quiet --upgrade pip
    run "$venv/bin/python" -m pip install --quiet "$src"
    ((dry)) || echo "$want" > "$stamp"
fi

# 4. the settings: the sample on first install, the administrator's file after that
if [[ -f "$etc/ichtriage.toml" ]]; then
    say "keeping $etc/ichtriage.toml (the sample is $opt/ichtriage.toml.sample)"
else
    render "$src/deploy/ichtriage.toml" "$etc/ichtriage.toml" 0640
    ((real)) && run chown "root:$user" "$etc/ichtriage.toml"
fi
run install -m 0644 "$src/deploy/ichtriage.toml" "$opt/ichtriage.toml.sample"
for doc in deploy.md conformance.md; do
    [[ -f "$src/docs/$doc" ]] && run install -m 0644 "$src/docs/$doc" "$opt/docs/$doc"
done

# 5. the units, with this installation's paths
for unit in ichtriage.service ichtriage-worker@.service; do
    render "$src/deploy/systemd/$unit" "$units/$unit" 0644
done

# 6. systemd
if ((real)) && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    run systemctl daemon-reload
    ((enable)) && run systemctl enable --now ichtriage.service
elif ((real)); then
    if ((dry)); then
        say "systemd is not running here: an install would write the units and enable nothing"
    else
        say "systemd is not running here: units written, nothing enabled"
    fi
fi
if ((dry)); then
    say "dry run: nothing was changed; an install would run the commands above (+ lines)"
else
    say "done. Edit $etc/ichtriage.toml, then: systemctl enable --now ichtriage"
fi
