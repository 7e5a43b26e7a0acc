"""deploy/: the sample settings, the install script and the systemd units it writes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.config import Settings, load_settings, setting_names
from tests.peers import missing_peer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "deploy" / "ichtriage.toml"
INSTALL = ROOT / "deploy" / "install.sh"
UNITS = ("ichtriage.service", "ichtriage-worker@.service")
_KEY = re.compile(r"^(#\s*)?([a-z_]+)\s*=", re.M)


def _venv() -> Path:
    """The virtualenv running the tests, which has the node installed."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "ichtriage").exists():
        pytest.fail(f"{venv} has no bin/ichtriage: install the node (deploy/setup.sh)")
    return venv


def _install(prefix: Path, *extra: str) -> str:
    done = subprocess.run(["bash", str(INSTALL), "--prefix", str(prefix), "--venv",
                           str(_venv()), *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_sample_names_and_explains_every_setting() -> None:
    text = SAMPLE.read_text()
    found = [m.group(2) for m in _KEY.finditer(text)]
    assert sorted(set(found)) == sorted(setting_names()), "deploy/ichtriage.toml and Settings differ"
    lines = text.splitlines()
    for at, line in enumerate(lines):
        if not _KEY.match(line):
            continue
        above = at - 1  # the explanation is the comment above the key (or above its group)
        while _KEY.match(lines[above]):
            above -= 1
        assert lines[above].startswith("# ") and len(lines[above]) > 10, (
            f"deploy/ichtriage.toml line {at + 1}: no explanation above it")


def test_sample_loads_as_it_is_and_with_every_line_uncommented(tmp_path: Path) -> None:
    settings = load_settings(config_file=SAMPLE, env={})
    assert settings.data_dir == Path("/var/lib/ichtriage")
    assert settings.allow_ae, "the sample sets allow_ae, as any node not on loopback should"
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(re.sub(r"^#\s*([a-z_]+\s*=)", r"\1", SAMPLE.read_text(), flags=re.M))
    everything = load_settings(config_file=uncommented, env={})
    assert everything.tls_cert is not None and everything.tls_ca is not None


def test_commented_values_are_the_defaults(tmp_path: Path) -> None:
    """"# key = value" shows the default, except for settings that are off by default."""
    defaults = Settings()
    for match in re.finditer(r"^#\s*([a-z_]+)\s*=.*$", SAMPLE.read_text(), flags=re.M):
        name = match.group(1)
        default = getattr(defaults, name)
        if default in (None, ""):  # off by default: the line is an example
            continue
        one = tmp_path / f"{name}.toml"
        one.write_text(match.group(0).lstrip("# ") + "\n")
        assert getattr(load_settings(config_file=one, env={}), name) == default, name


def test_install_into_a_prefix_is_complete_and_idempotent(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    out = _install(prefix)
    assert "no user created" in out
    config = prefix / "etc" / "ichtriage" / "ichtriage.toml"
    data = prefix / "var" / "lib" / "ichtriage"
    units = prefix / "etc" / "systemd" / "system"
    assert data.is_dir() and (prefix / "opt/ichtriage/docs/conformance.md").is_file()
    settings = load_settings(config_file=config, env={})
    assert settings.data_dir == data, "the installed settings point at the installed data dir"
    for unit in UNITS:
        text = (units / unit).read_text()
        assert f"--config {config}" in text and f"ReadWritePaths={data}" in text
        assert f"ExecStart={_venv()}/bin/ichtriage " in text
        unprefixed = rf"(?<!{re.escape(str(prefix))})/(opt|etc|var/lib)/ichtriage"
        assert re.search(unprefixed, text) is None, f"{unit} names a path outside the prefix"
    config.write_text(config.read_text().replace('ae_title = "ICHTRIAGE"', 'ae_title = "MINE"'))
    before = {p: p.read_bytes() for p in units.iterdir()}
    again = _install(prefix)
    assert "keeping" in again and load_settings(config_file=config, env={}).ae_title == "MINE"
    assert {p: p.read_bytes() for p in units.iterdir()} == before


def test_dry_run_does_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    out = _install(prefix, "--dry-run")
    assert not prefix.exists()
    assert f"+ render {ROOT}/deploy/systemd/ichtriage.service" in out
    system = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True,
                            text=True, timeout=60)
    assert system.returncode == 0, system.stderr
    assert "+ install -d -m 0750 /etc/ichtriage /var/lib/ichtriage" in system.stdout
    assert "pip install" in system.stdout or "is up to date" in system.stdout


def test_units_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing_peer("systemd-analyze (Debian package systemd)")
    prefix = tmp_path / "root"
    _install(prefix)
    units = prefix / "etc" / "systemd" / "system"
    instance = units / "ichtriage-worker@0.service"
    instance.symlink_to(units / "ichtriage-worker@.service")
    paths = [str(units / "ichtriage.service"), str(instance)]
    verify = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", (
        verify.stdout + verify.stderr)
    for path in paths:  # hardening: exposure "OK" (below 3.0 of 10)
        security = subprocess.run([analyze, "security", "--offline=true", "--threshold=30",
                                   path], capture_output=True, text=True, timeout=120)
        assert security.returncode == 0, security.stdout[-2000:] + security.stderr


def _exec_start(unit: Path) -> list[str]:
    """The unit's ExecStart as argv, with its Environment= defaults put in as systemd would."""
    text = unit.read_text()
    env = dict(re.findall(r"^Environment=(\w+)=(\S*)$", text, flags=re.M))
    line = re.search(r"^ExecStart=(.+)$", text, flags=re.M)
    assert line is not None, f"{unit.name}: no ExecStart"
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word)
            for word in line.group(1).split()]


def _start(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _until_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> str:
    """The process's 'ready:' line, once it has logged it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ready = [line for line in log.read_text(errors="replace").splitlines()
                 if "ready:" in line]
        if ready:
            return ready[0]
        time.sleep(0.1)
    raise AssertionError(f"{log.name}: no ready line\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.slow
def test_installed_units_start_the_node_and_a_worker(tmp_path: Path) -> None:
    """The command lines of the installed units, with the installed settings (over loopback
    and a free port), start a node that answers a C-ECHO and a worker on the same database;
    both stop cleanly on SIGTERM, as systemd stops them."""
    from pynetdicom import AE

    from tests.peers import free_port

    prefix = tmp_path / "root"
    _install(prefix)
    units = prefix / "etc" / "systemd" / "system"
    data = prefix / "var" / "lib" / "ichtriage"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHTRIAGE_")} | {
        "ICHTRIAGE_BIND": "127.0.0.1", "ICHTRIAGE_PORT": str(port), "ICHTRIAGE_RECEIVERS": "1",
        "ICHTRIAGE_WORKERS": "0", "ICHTRIAGE_HTTP_PORT": "0", "ICHTRIAGE_MIN_FREE_MB": "0",
        "ICHTRIAGE_ALLOW_AE": "DEPLOYTEST@127.0.0.1", "ICHTRIAGE_DEVICE": "cpu"}
    node = _start(_exec_start(units / "ichtriage.service"), data, env, tmp_path / "node.log")
    worker = None
    try:
        _until_ready(node, tmp_path / "node.log")
        ae = AE(ae_title="DEPLOYTEST")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="ICHTRIAGE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        worker = _start(_exec_start(units / "ichtriage-worker@.service"), data, env,
                        tmp_path / "worker.log")
        assert "1 triage workers" in _until_ready(worker, tmp_path / "worker.log")
        assert (data / "ichtriage.db").is_file(), "the installed data_dir holds the database"
    finally:
        for proc in (worker, node):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    assert node.wait(timeout=90) == 0
    assert worker is not None and worker.wait(timeout=90) == 0


def test_dry_run_says_it_would_and_not_that_it_did() -> None:
    done = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "units written" not in done.stdout and "done. Edit" not in done.stdout
    assert done.stdout.rstrip().splitlines()[-1] == (
        "install.sh: dry run: nothing was changed; an install would run the commands above "
        "(+ lines)")


def test_run_node_help_installs_nothing(tmp_path: Path) -> None:
    """Without ./.venv a short usage, and deploy/setup.sh is not run; with it, the node's own
    `serve --help`."""
    (tmp_path / "deploy").mkdir()
    for script in ("run-node.sh", "setup.sh"):
        shutil.copy2(ROOT / "deploy" / script, tmp_path / "deploy" / script)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    run_node = ["bash", str(tmp_path / "deploy" / "run-node.sh"), "--help"]
    done = subprocess.run(run_node, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: deploy/run-node.sh" in done.stdout
    assert not (tmp_path / ".venv").exists()  # setup.sh makes it first thing
    node = tmp_path / ".venv" / "bin" / "ichtriage"
    node.parent.mkdir(parents=True)
    node.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m node \"$@\"\n")
    node.chmod(0o755)
    done = subprocess.run(run_node, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: ichtriage serve" in done.stdout and "--ae-title" in done.stdout
