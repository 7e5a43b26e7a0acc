"""`ichtriage serve --http-port`: uvicorn inside the node, on loopback, stopped with it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.nodeproc import running_node
from tests.peers import LOOPBACK, free_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


def listening_addresses(port: int) -> set[str]:
    """The IPv4 and IPv6 addresses a socket listens on at `port` (Linux /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.mark.slow
def test_the_node_serves_http_on_loopback_and_stops_with_it(tmp_path: Path) -> None:
    with running_node(tmp_path, http=True, env={"ICHTRIAGE_METRICS": "false"}) as node:
        status, body = get(node.http_url + "/healthz")
        assert status == 200 and json.loads(body)["database"] is True
        assert get(node.http_url + "/api/worklist")[0] == 401
        assert get(node.http_url + "/metrics")[0] == 404  # the metrics setting is off
        assert listening_addresses(node.http_port) == {LOOPBACK}
        assert node.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, node.http_port), timeout=2).close()
    access = [line for line in node.log_text().splitlines() if "uvicorn.access" in line]
    assert any('"GET /healthz HTTP/1.1" 200' in line for line in access)


def test_a_taken_http_port_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "node", "serve", "--data-dir", str(tmp_path / "var"),
             "--port", str(free_port()), "--http-port", str(port), "--workers", "0",
             "--receivers", "1"],
            capture_output=True, text=True, timeout=120,
            env={"ICHTRIAGE_MIN_FREE_MB": "0", "PATH": "/usr/bin:/bin",
                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 1
    assert f"cannot start: cannot listen on 127.0.0.1:{port} (http_bind, http_port)" in \
        done.stderr
    assert "Traceback" not in done.stderr
