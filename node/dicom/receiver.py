"""Receiving processes: one listening socket, several processes handling associations.

pynetdicom runs each association on a thread, and all of them share one interpreter lock. To
keep every core busy the supervisor accepts connections on the configured port and hands each
accepted socket (SCM_RIGHTS over a Unix socket pair) to the receiving process that has the
fewest open associations. Each receiving process runs its own pynetdicom AE, database engine
and file store, and never imports the model.

The supervisor counts open connections, node-wide and per calling host. One over
`max_associations` or `max_associations_per_host` is still handed on, marked, and its
association request is rejected (transient, local limit exceeded; PS3.8 9.3.4) so the peer
knows to retry; beyond twice those limits a connection is closed at once.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, cast

from pydicom import config as pydicom_config
from pynetdicom import _config
from pynetdicom.transport import ThreadedAssociationServer

from node.config import Settings
from node.dicom import fastpath
from node.dicom.ae import build_ae, server_tls_context
from node.dicom.guard import ReadLimits
from node.dicom.qr_scp import QueryHandlers
from node.dicom.store_scp import StoreHandlers
from node.logs import configure_logging
from storage.associations import AssociationLog
from storage.db import make_engine
from storage.files import FileStore
from storage.instances import InstanceStore

logger = logging.getLogger(__name__)

STOP = b"stop"
DONE = b"done"
READY = b"ready"
READY_TIMEOUT = 120.0  # seconds a receiving process may take to import and open its services


class ReceiverStartError(RuntimeError):
    """A receiving process did not start; the message says which and why."""


class DispatchedServer(ThreadedAssociationServer):
    """An association server fed with sockets accepted elsewhere: it never binds or listens."""

    def __init__(self, *args: Any, on_finished: Any = None, read_limits: ReadLimits,
                 **kwargs: Any) -> None:
        self._on_finished = on_finished
        self.read_limits = read_limits
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        raise RuntimeError("a dispatched server is handed its connections")

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.ssl_context is not None:
                try:
                    # a peer that never completes its handshake must not hold a thread
                    request.settimeout(self.read_limits.request_timeout)
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    logger.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                    request.close()
                    return
            super().process_request_thread(request, client_address)
        finally:
            if self._on_finished is not None:
                self._on_finished(client_address)


def read_limits(settings: Settings) -> ReadLimits:
    """What one association may make a receiving process hold or wait for."""
    return ReadLimits(max_pdu=settings.max_pdu, max_message=settings.max_message_mb << 20,
                      request_timeout=settings.association_request_timeout,
                      pdu_timeout=settings.network_timeout)


def make_receiving_server(settings: Settings, handlers: StoreHandlers,
                          queries: QueryHandlers | None = None, *,
                          on_finished: Any = None) -> DispatchedServer:
    """The AE and association server of one receiving process, on the configured path:
    storage, and Query/Retrieve when `queries` is given."""
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        # pynetdicom's documented switch: no per-PDU and per-message log handlers (they
        # describe every data set, and keep responses off the fast path)
        _config.LOG_HANDLER_LEVEL = "none"
    # Identifiers carry patient names and IDs: pynetdicom must not log them (documented switches)
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    ae = build_ae(settings)
    bindings = handlers.bindings() + (queries.bindings() if queries is not None else [])
    server = ae.make_server((settings.bind, 0), evt_handlers=bindings,
                            ssl_context=server_tls_context(settings),
                            server_class=DispatchedServer, on_finished=on_finished,
                            read_limits=read_limits(settings),
                            request_handler=fastpath.request_handler(settings.receive_path))
    return cast(DispatchedServer, server)


def receiver_main(settings: Settings, channel: socket.socket, index: int) -> None:
    """Entry point of one receiving process."""
    configure_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Header values a sender got slightly wrong must not stop the store; they are kept as sent.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    engine = make_engine(settings.database_url)
    files = FileStore(settings.files_dir, min_free_bytes=settings.min_free_mb * 1024 * 1024)
    handlers = StoreHandlers(InstanceStore(engine, files), AssociationLog(engine),
                             ae_title=settings.ae_title, allowed=settings.allow_ae,
                             default_character_set=settings.default_character_set,
                             may_store=settings.allow_store_ae)
    queries = QueryHandlers(engine, files, ae_title=settings.ae_title,
                            destinations=settings.move_destination,
                            allowed=settings.allow_query_ae)
    send_lock = threading.Lock()

    def finished(address: Any) -> None:
        handlers.forget(str(address[0]), int(address[1]))
        with send_lock:
            try:
                channel.send(DONE + b" " + str(address[0]).encode())
            except OSError:
                pass  # the supervisor is gone; nothing to tell

    server = make_receiving_server(settings, handlers, queries, on_finished=finished)
    logger.debug("receiver %d (pid %d) ready", index, os.getpid())
    with send_lock:
        channel.send(READY)
    try:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(channel, 1024, 1)
            except OSError:
                break
            if not msg or msg == STOP:
                for fd in fds:
                    os.close(fd)
                break
            peer = json.loads(msg)
            if peer.get("refuse"):
                handlers.refuse(peer["host"], peer["port"], peer["refuse"])
            for fd in fds:
                conn = socket.socket(fileno=fd)
                server.process_request(conn, (peer["host"], peer["port"]))
    finally:
        _drain(server, settings.network_timeout)
        engine.dispose()


def _drain(server: ThreadedAssociationServer, grace: float) -> None:
    """Let open associations finish their transfers, then abort what is left."""
    deadline = time.monotonic() + grace
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    for assoc in server.active_associations:
        logger.warning("aborting association from %s at shutdown", assoc.requestor.ae_title)
        assoc.abort()
    server.server_close()


@dataclass
class _Receiver:
    index: int
    process: BaseProcess
    channel: socket.socket
    active: int = 0
    hosts: Counter[str] = field(default_factory=Counter)  # open associations by calling host
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReceiverPool:
    """The supervisor's side: the listening socket, the accept loop and the receivers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._receivers: list[_Receiver] = []
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._selector = selectors.DefaultSelector()
        self._select_lock = threading.Lock()
        self._open_by_host: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self.address: tuple[str, int] | None = None

    def start(self) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.settings.bind else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.settings.bind, self.settings.port))
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener
        self.address = listener.getsockname()[:2]
        for index in range(self.settings.receiver_count):
            self._receivers.append(self._spawn(index))
        for receiver in self._receivers:
            self._wait_ready(receiver)
        for target in (self._accept_loop, self._done_loop):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self.address

    def _wait_ready(self, receiver: _Receiver) -> None:
        """Until `receiver` serves: `ready:` means every receiving process can take an
        association. Raises ReceiverStartError when it ends or says nothing in time."""
        receiver.channel.settimeout(READY_TIMEOUT)
        try:
            message = receiver.channel.recv(64)
        except TimeoutError:
            message = b""
        finally:
            receiver.channel.settimeout(None)
        if message != READY:
            raise ReceiverStartError(
                f"receiving process {receiver.index} did not start (exit code "
                f"{receiver.process.exitcode}); its log lines above say why")

    def _spawn(self, index: int) -> _Receiver:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._ctx.Process(target=receiver_main, args=(self.settings, child, index),
                                    name=f"ichtriage-receiver-{index}", daemon=False)
        process.start()
        child.close()
        receiver = _Receiver(index, process, parent)
        with self._select_lock:
            self._selector.register(parent, selectors.EVENT_READ, receiver)
        return receiver

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self._listener.accept()
            except TimeoutError:
                self._respawn_dead()
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                logger.exception("accept failed")
                time.sleep(0.1)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._dispatch(conn, addr)

    def _admission(self, host: str) -> tuple[str, str] | None:
        """None to accept a connection from `host`; ('refuse', why) to hand it on for a
        rejection; ('close', why) to close it at once. Counts it unless it is closed."""
        node_limit = self.settings.max_associations
        host_limit = self.settings.max_associations_per_host
        with self._count_lock:
            total, from_host = sum(self._open_by_host.values()), self._open_by_host[host]
            if total >= 2 * node_limit or from_host >= 2 * host_limit:
                return "close", f"{from_host} open from this host, {total} in all"
            self._open_by_host[host] += 1
        if total >= node_limit:
            return "refuse", f"{total} associations open, the node's limit is {node_limit}"
        if from_host >= host_limit:
            return "refuse", (f"{from_host} associations open from this host, the limit "
                              f"is {host_limit}")
        return None

    def _closed(self, host: str, count: int = 1) -> None:
        with self._count_lock:
            self._open_by_host[host] -= count
            if self._open_by_host[host] <= 0:
                del self._open_by_host[host]

    def _dispatch(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        admission = self._admission(addr[0])
        message: dict[str, Any] = {"host": addr[0], "port": addr[1]}
        if admission is not None:
            action, why = admission
            if action == "close":
                logger.warning("connection from %s closed at once: %s", addr[0], why)
                conn.close()
                return
            logger.warning("association from %s will be rejected: %s", addr[0], why)
            message["refuse"] = why
        peer = json.dumps(message).encode()
        for receiver in sorted(self._receivers, key=lambda r: r.active):
            if not receiver.process.is_alive():
                continue
            try:
                socket.send_fds(receiver.channel, [peer], [conn.fileno()])
            except OSError as exc:
                logger.error("receiver %d unreachable: %s", receiver.index, exc)
                continue
            with receiver.lock:
                receiver.active += 1
                receiver.hosts[addr[0]] += 1
            conn.close()
            return
        logger.error("no receiving process alive; connection from %s closed", addr[0])
        self._closed(addr[0])
        conn.close()

    def _done_loop(self) -> None:
        while not self._stopping.is_set():
            with self._select_lock:
                events = self._selector.select(timeout=0.2)
            for key, _ in events:
                receiver: _Receiver = key.data
                try:
                    msg = receiver.channel.recv(512)
                except OSError:
                    msg = b""
                if msg == READY:
                    continue  # a replaced receiver is serving
                if msg.startswith(DONE):
                    host = msg[len(DONE) + 1:].decode(errors="replace")
                    with receiver.lock:
                        receiver.active = max(receiver.active - 1, 0)
                        receiver.hosts[host] -= 1
                    self._closed(host)
                elif not msg:
                    with self._select_lock:
                        self._selector.unregister(receiver.channel)

    def _respawn_dead(self) -> None:
        for i, receiver in enumerate(self._receivers):
            if receiver.process.is_alive() or self._stopping.is_set():
                continue
            logger.error("receiver %d (pid %s) exited with %s; starting a new one",
                         receiver.index, receiver.process.pid, receiver.process.exitcode)
            receiver.channel.close()
            with receiver.lock:
                for host, count in receiver.hosts.items():
                    if count > 0:
                        self._closed(host, count)
            self._receivers[i] = self._spawn(receiver.index)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let the receivers finish their associations, wait for them."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)
        timeout = (grace if grace is not None else self.settings.network_timeout) + 5
        for receiver in self._receivers:
            try:
                receiver.channel.send(STOP)
            except OSError:
                pass  # already gone
        for receiver in self._receivers:
            receiver.process.join(timeout=timeout)
            if receiver.process.is_alive():
                logger.error("receiver %d did not stop; terminating", receiver.index)
                receiver.process.terminate()
                receiver.process.join(timeout=5)
            receiver.channel.close()
        self._selector.close()
