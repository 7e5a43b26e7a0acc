"""Runs `ichtriage serve` as a real process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.peers import free_port


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM, as systemd stops a unit; SIGKILL (and re-raise) if it outlasts `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    db_url: str
    log: Path
    ae_title: str = "ICHTRIAGE"
    http_port: int = 0  # 0: the node serves no HTTP

    @property
    def http_url(self) -> str:
        if not self.http_port:
            raise RuntimeError("this node was started without HTTP (running_node(http=True))")
        return f"http://127.0.0.1:{self.http_port}"

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Rows of `sql` from the node's database, as tuples."""
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql)).all()]
        finally:
            engine.dispose()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        return stop(self.proc, timeout)


@contextmanager
def running_node(tmp: Path, *args: str, db_url: str | None = None, receivers: int = 2,
                 settle: float = 0.5, workers: int = 0, env: dict[str, str] | None = None,
                 ready_timeout: float = 60, http: bool = False) -> Iterator[NodeProcess]:
    """Start the node on a free loopback port; wait for its 'ready' line; stop it after.
    Without triage workers by default, so tests of receiving see jobs as queued; with
    `http`, the API and page on another free loopback port (else none)."""
    data_dir = tmp / "var"
    port = free_port()
    http_port = free_port() if http else 0
    while http and http_port == port:
        http_port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "node.log"
    url = db_url or f"sqlite:///{data_dir / 'ichtriage.db'}"
    cmd = [sys.executable, "-m", "node", "serve", "--data-dir", str(data_dir), "--db-url", url,
           "--port", str(port), "--http-port", str(http_port), "--settle-seconds", str(settle),
           "--receivers", str(receivers), "--workers", str(workers), *args]
    full_env = {**os.environ, "TCP_NODELAY": "1", "ICHTRIAGE_MIN_FREE_MB": "0", **(env or {})}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    node = NodeProcess(proc, port, data_dir, url, log, http_port=http_port)
    try:
        deadline = time.monotonic() + ready_timeout
        while "ready:" not in node.log_text():
            if proc.poll() is not None:
                raise RuntimeError(f"node exited with {proc.returncode}:\n{node.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node not ready after {ready_timeout}s:\n{node.log_text()}")
            time.sleep(0.05)
        yield node
    finally:
        node.stop()


@dataclass
class WorkerProcess:
    """A stand-alone `ichtriage worker` (a stand-in for a triage host)."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def name_prefix(self) -> str:
        """How its jobs' `worker` column begins: "host:pid:" (node.triage.worker)."""
        return f"{socket.gethostname()}:{self.proc.pid}:"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would; reaped."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 60) -> int:
        return stop(self.proc, timeout)


def start_worker(log: Path, *, data_dir: Path, db_url: str, threads: int = 1,
                 env: dict[str, str] | None = None) -> WorkerProcess:
    """Start `python -m node worker` on `data_dir` and `db_url` (not waiting for it)."""
    cmd = [sys.executable, "-m", "node", "worker", "--data-dir", str(data_dir),
           "--db-url", db_url, "--workers", str(threads), "--device", "cpu"]
    full_env = {**os.environ, "ICHTRIAGE_MIN_FREE_MB": "0", **(env or {})}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    return WorkerProcess(proc, log)


def wait_ready(worker: WorkerProcess, timeout: float = 120) -> None:
    """Wait for the worker's 'ready:' line; RuntimeError with its log when it ends first."""
    deadline = time.monotonic() + timeout
    while "ready:" not in worker.log_text():
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n"
                               f"{worker.log_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready after {timeout}s:\n{worker.log_text()}")
        time.sleep(0.05)


@contextmanager
def running_workers(tmp: Path, count: int, *, data_dir: Path, db_url: str,
                    env: dict[str, str] | None = None, wait: bool = True,
                    ready_timeout: float = 120) -> Iterator[list[WorkerProcess]]:
    """`count` stand-alone worker processes started together (each ready, unless not `wait`:
    then `wait_ready` each); stopped together after (SIGTERM; those killed are only reaped).
    The database must be at the newest schema already (`storage.db.upgrade`, or a node)."""
    workers: list[WorkerProcess] = []
    try:
        for i in range(count):
            workers.append(start_worker(tmp / f"worker-{i}.log", data_dir=data_dir,
                                        db_url=db_url, env=env))
        for worker in workers if wait else ():
            wait_ready(worker, ready_timeout)
        yield workers
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.stop()
