"""Real peer processes for the tests: PostgreSQL, Orthanc, DCMTK storescp/storescu/echoscu.

Every server listens on 127.0.0.1 only where the program allows it (see the notes on each
function), on a free port, with its log kept beside its data for failure messages. Every
context manager stops and reaps its processes on the way out, also when the body raises.
DCMTK programs get ``TCP_NODELAY=1`` in their environment.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PG_DATABASE = "ichtriage"
_LOG_TAIL_CHARS = 4000


# --------------------------------------------------------------------------- generic helpers


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 30.0,
    *,
    proc: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
) -> None:
    """Wait until ``host:port`` accepts a TCP connection.

    Fails early when ``proc`` (the server expected to listen there) has exited; ``log`` is
    quoted in the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} exited with {proc.returncode} before listening on "
                f"{host}:{port}{_log_tail(log)}"
            )
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout:.0f} s{_log_tail(log)}"
                ) from None
            time.sleep(0.05)


def nodelay_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``TCP_NODELAY=1`` (read by DCMTK's network layer)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


def _log_tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    return f"\n--- tail of {log} ---\n{text}"


def _reap(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always waits, so no zombie is left."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait(timeout=timeout)


# --------------------------------------------------------------------------- DCMTK


def _is_dcmtk(path: str) -> bool:
    with open(path, "rb") as head:
        if head.read(4) != b"\x7fELF":  # a script, such as pynetdicom's apps
            return False
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "$dcmtk:" in out.stdout


_DCMTK_CACHE: dict[str, str] = {}


def dcmtk_tool(name: str) -> str:
    """Absolute path of the DCMTK program ``name``.

    pynetdicom installs Python apps with the same names (storescu, storescp, echoscu,
    findscu...) into the virtualenv's bin/, which comes first on PATH when the venv is
    active; those are skipped.
    """
    if name in _DCMTK_CACHE:
        return _DCMTK_CACHE[name]
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(directory or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK) and _is_dcmtk(str(candidate)):
            _DCMTK_CACHE[name] = str(candidate)
            return str(candidate)
    raise RuntimeError(f"DCMTK program {name!r} not found on PATH (apt-get install dcmtk)")


def missing_peer(what: str) -> NoReturn:
    """A peer a test needs is not installed: a failure under CI (`CI=true`: an install step
    broke, and a skip would hide it), a skip elsewhere."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed (deploy/system-packages.sh installs it)")
    pytest.skip(f"{what} is not installed")


def needs(available: bool, what: str) -> Any:
    """A pytest mark: skip without `what`, except under CI, where the test runs and fails."""
    import pytest

    return pytest.mark.skipif(not available and os.environ.get("CI") != "true",
                              reason=f"{what} is not installed")


def have_dcmtk() -> bool:
    try:
        dcmtk_tool("storescu")
    except RuntimeError:
        return False
    return True


# Debian's /usr/bin/chromium is a shell wrapper; Playwright drives the browser binary itself.
_CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")


def chromium_path() -> str:
    """Debian's chromium binary (deploy/system-packages.sh installs it); $CHROMIUM wins."""
    for candidate in (os.environ.get("CHROMIUM", ""), *_CHROMIUM_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("chromium not found (apt-get install chromium)")


def have_chromium() -> bool:
    """The browser and Playwright for Python (a dev dependency) to drive it."""
    try:
        chromium_path()
        import playwright.sync_api  # noqa: F401
    except (RuntimeError, ImportError):
        return False
    return True


def _as_paths(files_or_dir: Path | str | Sequence[Path | str]) -> list[Path]:
    if isinstance(files_or_dir, str | Path):
        return [Path(files_or_dir)]
    return [Path(p) for p in files_or_dir]


def run_storescu(
    files_or_dir: Path | str | Sequence[Path | str],
    port: int,
    *,
    aet: str,
    called_aet: str,
    extra_args: Sequence[str] = (),
    host: str = LOOPBACK,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (or directories, scanned recursively) with DCMTK storescu, one association.

    Does not raise on a non-zero exit: callers assert on ``returncode`` and ``stderr``.
    ``timeout`` bounds the whole run; the child is killed when it expires.
    """
    paths = _as_paths(files_or_dir)
    if not paths:
        raise ValueError("files_or_dir names no file")
    cmd = [dcmtk_tool("storescu"), "-aet", aet, "-aec", called_aet, "-to", "10"]
    if any(p.is_dir() for p in paths):
        cmd += ["+sd", "+r"]
    cmd += [*extra_args, host, str(port), *map(str, paths)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=nodelay_env(), check=False
    )


def run_echoscu(
    port: int,
    *,
    aet: str,
    called_aet: str,
    host: str = LOOPBACK,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK echoscu; does not raise on a non-zero exit."""
    cmd = [dcmtk_tool("echoscu"), "-aet", aet, "-aec", called_aet, "-to", "10", host, str(port)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=nodelay_env(), check=False
    )


class StoreSCP(NamedTuple):
    """What ``storescp_server`` yields; unpacks as ``aet, port``."""

    aet: str
    port: int


_STORESCP_LOG_CONFIG = """\
log4cplus.rootLogger = {level}, logfile
log4cplus.appender.logfile = log4cplus::FileAppender
log4cplus.appender.logfile.File = {path}
log4cplus.appender.logfile.Append = true
log4cplus.appender.logfile.ImmediateFlush = true
log4cplus.appender.logfile.layout = log4cplus::PatternLayout
log4cplus.appender.logfile.layout.ConversionPattern = %D{{%H:%M:%S.%q}} %5p [%i] %m%n
"""


@dataclass
class _InetdAcceptor:
    """Listens on 127.0.0.1 and hands each connection to a fresh ``storescp --inetd``.

    DCMTK 3.6.7's storescp has no option to choose the listening address (it binds
    INADDR_ANY). Its inetd mode serves one association on an already connected socket
    passed as stdin, so we own the listening socket and keep it on loopback. The cost is one
    exec per association, like ``storescp --fork``.
    """

    command: list[str]
    stderr_log: Path
    sock: socket.socket = field(init=False)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(32)
        self.sock.settimeout(0.2)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="storescp-acceptor", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self.stderr_log.open("ab") as err:
            while not self._stop.is_set():
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    for child in self.children:
                        child.poll()  # reap the ones that are done
                    continue
                except OSError as exc:
                    if not self._stop.is_set():
                        self.errors.append(exc)
                    return
                try:
                    conn.setblocking(True)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    child = subprocess.Popen(
                        self.command,
                        stdin=conn.fileno(),
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        env=nodelay_env(),
                    )
                    self.children.append(child)
                except OSError as exc:
                    self.errors.append(exc)
                finally:
                    conn.close()  # the child holds its own copy

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.sock.close()
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _reap(child, timeout=5.0)


@contextmanager
def storescp_server(
    out_dir: Path,
    *,
    aet: str = "STORESCP",
    verbose: bool = False,
    extra_args: Sequence[str] = (),
) -> Iterator[StoreSCP]:
    """DCMTK storescp on 127.0.0.1 writing what it receives into ``out_dir``.

    Accepts every storage SOP class, also unknown ones (``--promiscuous``), in every
    transfer syntax DCMTK knows (``+xa``). Its log goes to
    ``<out_dir.parent>/storescp-<out_dir.name>.log`` so that ``out_dir`` holds only DICOM files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir.parent / f"storescp-{out_dir.name}.log"
    log_cfg = out_dir.parent / f"storescp-{out_dir.name}.logcfg"
    log_cfg.write_text(_STORESCP_LOG_CONFIG.format(level="INFO" if verbose else "WARN", path=log))
    command = [
        dcmtk_tool("storescp"),
        "--inetd",
        "--aetitle", aet,
        "--output-directory", str(out_dir),
        "--promiscuous",
        "+xa",
        "--disable-host-lookup",
        "--log-config", str(log_cfg),
        *extra_args,
    ]  # fmt: skip
    acceptor = _InetdAcceptor(command, stderr_log=log)
    acceptor.start()
    try:
        yield StoreSCP(aet, acceptor.port)
    except BaseException:
        acceptor.close(timeout=0.0)  # the body failed: do not wait for open associations
        raise
    acceptor.close()
    failed = [c for c in acceptor.children if c.returncode not in (0, None)]
    if acceptor.errors or failed:
        codes = [c.returncode for c in failed]
        raise RuntimeError(
            f"storescp acceptor errors {acceptor.errors!r}, child exit codes {codes}"
            f"{_log_tail(log)}"
        )


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    """Where initdb and pg_ctl live: ``pg_config --bindir``, else /usr/lib/postgresql/*/bin."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "pg_ctl").exists() and (bindir / "initdb").exists():
            return bindir
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    if candidates:
        return candidates[0].parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None and shutil.which("initdb") is not None:
        return Path(pg_ctl).parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    )


def have_postgres() -> bool:
    try:
        _pg_bindir()
    except RuntimeError:
        return False
    return True


def _pg_env() -> dict[str, str]:
    # PG* variables of the caller (PGHOST, PGDATA, PGSERVICE...) must not redirect us.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _as_postgres_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """PostgreSQL refuses to run as root: when euid is 0, run its programs as ``postgres``."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root and there is no 'postgres' user") from None
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"], user
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [
            setpriv,
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
        ], user
    raise RuntimeError("running as root and neither runuser nor setpriv is available")


@dataclass
class _Cluster:
    """The programs and paths of one throw-away cluster; ``prefix`` runs them as postgres."""

    bindir: Path
    prefix: list[str]
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def run(self, program: str, *args: str, as_owner: bool = True, timeout: float = 60.0) -> None:
        cmd = [*(self.prefix if as_owner else []), str(self.bindir / program), *args]
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_pg_env(), check=False
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout}{out.stderr}"
                f"{_log_tail(self.log)}"
            )

    def start(self, timeout: float) -> None:
        self.run("initdb", "-D", str(self.data), *"-A trust -U postgres -E UTF8".split(),
                 "--locale=C", "--no-sync", timeout=timeout)  # fmt: skip
        self.launch(timeout)

    def launch(self, timeout: float) -> None:
        """Start the initialised cluster and wait until it accepts connections."""
        # fsync and full_page_writes are off because this throw-away test cluster never has
        # to survive a crash; never copy these settings to a real deployment.
        options = (
            f"-c listen_addresses={LOOPBACK} -p {self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off -c full_page_writes=off"
        )
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                 "-t", str(int(timeout)), "-o", options, "start", timeout=timeout + 10)  # fmt: skip

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            self.run("pg_ctl", "-D", str(self.data), *"-m fast -w -t 30 stop".split())
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            if pid_file.exists():
                # pg_ctl could not stop it: kill the postmaster we started, by its recorded pid.
                pid = int(pid_file.read_text().splitlines()[0])
                logger.warning("%s; sending SIGKILL to postmaster %d", exc, pid)
                _kill_and_wait(pid)


def _kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise RuntimeError(f"pid {pid} survived SIGKILL for {timeout:.0f} s")


@dataclass
class PostgresServer:
    """A running throw-away cluster: its SQLAlchemy URL, and a stop and start on the same
    port and data (a database restart, as the drills of the node's reconnection need)."""

    url: str
    cluster: _Cluster
    start_timeout: float = 60.0

    @property
    def running(self) -> bool:
        return (self.cluster.data / "postmaster.pid").exists()

    def stop(self) -> None:
        """A fast shutdown: open connections are cut off, committed data is kept."""
        self.cluster.stop()

    def start(self) -> None:
        """Start the stopped cluster again, on its port, and wait until it accepts."""
        self.cluster.launch(self.start_timeout)


@contextmanager
def postgres_cluster(
    tmp_dir: Path, *, database: str = PG_DATABASE, timeout: float = 60.0
) -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster on 127.0.0.1, as a handle that can stop and start it.

    The cluster lives in a fresh directory under the system temp dir (pytest's tmp_path is
    not reachable by the ``postgres`` user when the tests run as root); its server log is
    copied to ``tmp_dir/postgres.log`` on the way out. The server is stopped and the cluster
    removed even when the body raises.
    """
    bindir = _pg_bindir()
    prefix, pg_user = _as_postgres_user()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ichtriage-pg-"))
    if pg_user is not None:
        os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
    cluster = _Cluster(bindir, prefix, root, free_port())
    try:
        cluster.start(timeout)
        # createdb is a plain client: it connects over TCP with trust auth, as anyone.
        cluster.run("createdb", "-h", LOOPBACK, "-p", str(cluster.port), "-U", "postgres",
                    database, as_owner=False, timeout=timeout)  # fmt: skip
        yield PostgresServer(
            f"postgresql+psycopg://postgres@{LOOPBACK}:{cluster.port}/{database}", cluster,
            timeout)
    finally:
        try:
            cluster.stop()
        finally:
            if cluster.log.exists():
                shutil.copyfile(cluster.log, tmp_dir / "postgres.log")
            shutil.rmtree(root, ignore_errors=True)
            if root.exists():
                logger.warning("could not remove the test cluster at %s", root)


@contextmanager
def postgres_server(
    tmp_dir: Path, *, database: str = PG_DATABASE, timeout: float = 60.0
) -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1 (`postgres_cluster`); yields an SQLAlchemy
    URL to ``database``."""
    with postgres_cluster(tmp_dir, database=database, timeout=timeout) as server:
        yield server.url


# --------------------------------------------------------------------------- Orthanc


def have_orthanc() -> bool:
    return shutil.which("Orthanc") is not None


@dataclass
class OrthancServer:
    """A running Orthanc; ``stop()`` / ``start()`` keep its ports and storage.

    Orthanc 1.10 has no option for the listening address: its HTTP and DICOM servers bind
    all interfaces. ``RemoteAccessAllowed: false`` makes the HTTP server answer only
    loopback clients; the DICOM server has no such filter.
    """

    aet: str
    dicom_port: int
    http_port: int
    config_path: Path
    log_path: Path
    binary: str
    start_timeout: float = 60.0
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def start(self) -> None:
        if self.running:
            raise RuntimeError("Orthanc is already running")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=nodelay_env(),
                cwd=self.config_path.parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self._proc.returncode} while starting"
                    f"{_log_tail(self.log_path)}"
                )
            try:
                self.rest("/system", timeout=2.0)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Orthanc REST API not up after {self.start_timeout:.0f} s"
                        f"{_log_tail(self.log_path)}"
                    ) from None
                time.sleep(0.1)
        wait_for_port(
            LOOPBACK,
            self.dicom_port,
            timeout=max(1.0, deadline - time.monotonic()),
            proc=self._proc,
            log=self.log_path,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL after ``timeout``; no-op when not running."""
        if self._proc is not None:
            _reap(self._proc, timeout=timeout)
            self._proc = None

    def rest(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes | dict[str, Any] | list[Any] | str | None = None,
        timeout: float = 10.0,
    ) -> Any:
        """Call Orthanc's REST API on loopback and return the parsed JSON (None when empty)."""
        data: bytes | None
        if body is None or isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            exc.close()
            raise RuntimeError(f"Orthanc {method} {path} -> {exc.code}: {detail}") from None
        return json.loads(payload) if payload.strip() else None

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        return list(self.rest("/instances"))

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        expanded = self.rest("/instances?expand", timeout=30.0)
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in expanded}

    def delete_all(self) -> None:
        """Delete every patient (and so every study, series and instance)."""
        for patient in self.rest("/patients"):
            self.rest(f"/patients/{patient}", method="DELETE")


def _orthanc_config(
    root: Path,
    aet: str,
    dicom_port: int,
    http_port: int,
    known_modalities: dict[str, tuple[str, str, int]],
) -> dict[str, Any]:
    return {
        "Name": "ichtriage-test-pacs",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "StorageCompression": False,
        "Plugins": [],  # not the Debian package's /usr/share/orthanc/plugins
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "HttpCompressionEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {
            name: [m_aet, host, port] for name, (m_aet, host, port) in known_modalities.items()
        },
        "DicomModalitiesInDatabase": False,
        "StableAge": 60,
        "SaveJobs": False,
    }


@contextmanager
def orthanc_server(
    tmp_dir: Path,
    *,
    aet: str = "ORTHANC",
    known_modalities: dict[str, tuple[str, str, int]] | None = None,
    start_timeout: float = 60.0,
    dicom_port: int | None = None,
) -> Iterator[OrthancServer]:
    """A private Orthanc with its storage, index, config and log under ``tmp_dir/orthanc``,
    on ``dicom_port`` (default: a free one).

    ``known_modalities`` maps a name to ``(AET, host, port)`` (Orthanc's DicomModalities),
    the peers Orthanc may C-STORE/C-MOVE to.
    """
    binary = shutil.which("Orthanc")
    if binary is None:
        raise RuntimeError("Orthanc not found on PATH (apt-get install orthanc)")
    root = tmp_dir / "orthanc"
    root.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = dicom_port or free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config = _orthanc_config(root, aet, dicom_port, http_port, known_modalities or {})
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    server = OrthancServer(
        aet=aet,
        dicom_port=dicom_port,
        http_port=http_port,
        config_path=config_path,
        log_path=root / "orthanc.log",
        binary=binary,
        start_timeout=start_timeout,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
