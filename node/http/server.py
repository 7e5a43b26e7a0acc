"""uvicorn in a thread of the serving process: it shares the node's engine and stops with it.

A thread rather than a child process: the API is light (SQL reads, one PNG at a time);
uvicorn does not install signal handlers outside the main thread, so SIGTERM stays the
node's. Sessions are in the database, so a restart logs nobody out.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from node.http import access_log
from node.http.app import create_app
from node.http.context import WebContext
from node.http.errors import HttpStartError

logger = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, ctx: WebContext, *, host: str, port: int) -> None:
        access_log.install()  # no query values (patient names in QIDO) in the access log
        config = uvicorn.Config(create_app(ctx), host=host, port=port, log_config=None,
                                access_log=True, server_header=False, proxy_headers=False,
                                lifespan="off", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._failed: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            self._failed = exc
        except Exception as exc:
            logger.exception("the HTTP server failed")
            self._failed = exc

    def start(self, timeout: float = 30.0) -> tuple[str, int]:
        """Start and wait until it listens; the address it listens on."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise HttpStartError(f"cannot listen on {self._server.config.host}:"
                                     f"{self._server.config.port}")
            time.sleep(0.02)
        sockets = [s for server in self._server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return str(host), int(port)

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
