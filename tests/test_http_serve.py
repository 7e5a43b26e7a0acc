"""`ichtriage serve --http-port`: uvicorn inside the node, on loopback, stopped with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.factories import ct_series, write_series
from tests.nodeproc import running_node, wait_for
from tests.peers import LOOPBACK, free_port, run_echoscu, run_storescu


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
        assert status == 503 and json.loads(body)["database"] is True  # 503: no worker
        assert get(node.http_url + "/api/worklist")[0] == 401
        for query in ("PatientName=PHANTOM%5E9833", "00100020=PID9833", "PatientID=PID9833"):
            assert get(f"{node.http_url}/dicom-web/studies?{query}&limit=5")[0] == 401
        assert get(node.http_url + "/metrics")[0] == 404  # the metrics setting is off
        assert listening_addresses(node.http_port) == {LOOPBACK}
        assert node.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, node.http_port), timeout=2).close()
    access = [line for line in node.log_text().splitlines() if "uvicorn.access" in line]
    assert any('"GET /healthz HTTP/1.1" 503' in line for line in access)
    # the query's keys are logged, never its values (a patient's name or ID in a QIDO)
    assert any('"GET /dicom-web/studies?PatientName=-&limit=-' in line for line in access)
    assert any('/dicom-web/studies?00100020=-&limit=-' in line for line in access)
    assert "PHANTOM" not in node.log_text() and "9833" not in node.log_text()


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


@pytest.mark.slow
def test_health_and_metrics_see_the_other_processes(tmp_path: Path) -> None:
    """The receivers and a stand-alone worker are other processes than the HTTP server: a
    rejected association and a refused C-STORE reach /metrics, and /healthz follows a
    `ichtriage worker` as it starts and stops."""
    series = write_series(tmp_path / "in", ct_series(2))
    with running_node(tmp_path, "--allow-ae", "CT1", "--allow-ae", "CT2", "--allow-store-ae",
                      "CT1", http=True) as node:
        status, body = get(node.http_url + "/healthz")
        assert status == 503 and json.loads(body)["worker_alive"] is False, body
        assert "no triage worker alive" in json.loads(body)["problems"][0]
        assert run_echoscu(node.port, aet="INTRUDER", called_aet=node.ae_title).returncode != 0
        # CT2 may call but not store: its C-STORE is refused with 0x0124 (storescu stops)
        assert run_storescu(series, node.port, aet="CT2", called_aet=node.ae_title
                            ).returncode != 0

        def metrics() -> str:
            return get(node.http_url + "/metrics")[1]

        rejected = 'ichtriage_associations_rejected_total{reason="calling_ae_not_recognized"} 1.0'
        refused = 'ichtriage_stores_refused_total{status="0x0124"} 1.0'
        wait_for(lambda: rejected in metrics() and refused in metrics(), timeout=30,
                 what="the receivers' counts in /metrics")

        worker = subprocess.Popen(
            [sys.executable, "-m", "node", "worker", "--data-dir", str(node.data_dir),
             "--db-url", node.db_url, "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env={**os.environ, "ICHTRIAGE_MIN_FREE_MB": "0"})
        try:
            wait_for(lambda: get(node.http_url + "/healthz")[0] == 200, timeout=120,
                     what="the stand-alone worker's heartbeat")
            assert "ichtriage_workers_alive 1.0" in metrics()
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
        status, body = get(node.http_url + "/healthz")  # it said it stopped: at once
        assert status == 503 and json.loads(body)["worker_alive"] is False
