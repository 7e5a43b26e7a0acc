"""The node's settings: one frozen object, built once at start from defaults, an optional TOML
file, `ICHTRIAGE_*` environment variables and command-line flags (later sources win)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from pydicom import charset

from storage.outbox import DELIVERY_RETRY
from storage.retry import RetryPolicy

ENV_PREFIX = "ICHTRIAGE_"
_AE = re.compile(r"[ -~]{1,16}")  # PS3.5 AE VR: 16 printable characters, no backslash
_DEST = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>[^:]+|\[[^\]]+\]):(?P<port>\d{1,5})")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


def _check_ae(value: str, what: str) -> str:
    value = value.strip()
    if not _AE.fullmatch(value) or "\\" in value:
        raise ConfigError(f"{what}: {value!r} is not a valid AE title (1-16 printable characters)")
    return value


@dataclass(frozen=True)
class Destination:
    """A remote DICOM node results are sent to (C-STORE SCP)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = _DEST.fullmatch(text.strip())
        if not match:
            raise ConfigError(f"destination {text!r} is not AE@HOST:PORT")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"destination {text!r}: port out of range")
        return cls(_check_ae(match["ae"], "destination"), match["host"].strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class AllowedPeer:
    """A calling AE title the node accepts, optionally only from one host."""

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> AllowedPeer:
        ae, at, host = text.strip().partition("@")
        if at and not host.strip():
            raise ConfigError(f"allow_ae {text!r}: no host after '@' (AE or AE@HOST)")
        return cls(_check_ae(ae, "allow_ae"), host.strip() or None)

    def within(self, peers: Sequence[AllowedPeer]) -> bool:
        """Whether some association `peers` accept could match this entry."""
        return any(p.ae_title == self.ae_title and (p.host is None or self.host in (None, p.host))
                   for p in peers)

    def matches(self, ae_title: str, host: str) -> bool:
        return ae_title.strip() == self.ae_title and (self.host is None or self.host == host)

    def __str__(self) -> str:
        return self.ae_title if self.host is None else f"{self.ae_title}@{self.host}"


@dataclass(frozen=True)
class Settings:
    """Every setting of the node, with its default. Field names are the TOML keys; the
    environment variable is ICHTRIAGE_<NAME>; the flag --<name-with-dashes>."""

    ae_title: str = "ICHTRIAGE"
    bind: str = "127.0.0.1"
    port: int = 11112
    http_port: int = 8080  # 0: no HTTP server
    http_bind: str = "127.0.0.1"  # the API and the page stay on loopback unless set
    metrics: bool = True  # serve /metrics (open, like /healthz) on the HTTP port
    allow_ae: tuple[AllowedPeer, ...] = ()  # empty: any calling AE title
    # Of the AEs allow_ae admits, those that may store (C-STORE; others are answered 0x0124)
    # and those that may query and retrieve (C-FIND, C-MOVE, C-GET; others have those
    # presentation contexts rejected). Empty: every admitted AE.
    allow_store_ae: tuple[AllowedPeer, ...] = ()
    allow_query_ae: tuple[AllowedPeer, ...] = ()
    # C-MOVE destinations by AE title (AE@HOST:PORT); a move to any other is refused (0xA801)
    move_destination: tuple[Destination, ...] = ()
    data_dir: Path = Path("var")
    db_url: str = ""  # empty: a SQLite file inside data_dir
    settle_seconds: float = 2.0
    aborted_wait_seconds: float = 120.0  # a series whose transfer was aborted waits for a resend
    destinations: tuple[Destination, ...] = ()
    # After a failed delivery to a destination, the next try waits this long, doubled after
    # each further failure up to delivery_retry_max_seconds (storage.outbox DELIVERY_RETRY)
    delivery_retry_seconds: float = 2.0
    delivery_retry_max_seconds: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # when set, callers must present a certificate it signed
    receivers: int = 0  # receiving processes; 0: one per CPU core
    max_pdu: int = 131072  # largest P-DATA-TF body accepted, bytes (PS3.8 D.1); 0: unlimited
    max_message_mb: int = 1024  # largest data set of one DIMSE message held in memory
    max_associations: int = 32  # open at once, node-wide; more are rejected (transient)
    max_associations_per_host: int = 16  # open at once from one calling host
    association_request_timeout: float = 10.0  # connection to a complete A-ASSOCIATE-RQ
    network_timeout: float = 60.0  # an idle association, or a PDU that stops half-way, ends
    receive_path: str = "fast"  # fast: the node's pynetdicom subclasses; stock: pynetdicom's
    min_free_mb: int = 256  # refuse instances (0xA700) when less disk than this is free
    min_slices: int = 8
    default_character_set: str = ""  # assumed where a data set declares none; empty: ISO-IR 6
    min_coverage_mm: float = 100.0  # less head than this along the slice normal: provisional
    eligible_body_parts: tuple[str, ...] = ("HEAD", "BRAIN", "SKULL", "")
    log_level: str = "INFO"
    check_interval: float = 0.25  # how often the scheduler looks for settled series and results to send
    model: str = ""  # checkpoint imported and made active at start when not registered yet
    # (empty: the shipped demo model when the registry is empty); then the registry decides
    device: str = "auto"  # auto: CUDA when available, else CPU
    workers: int = 1  # triage workers inside `serve`; 0 when they run as `ichtriage worker`
    batch_size: int = 16
    key_images: bool = False  # with each SR, a Secondary Capture key image per finding
    job_lease_seconds: float = 30.0  # renewed every third while the worker lives
    job_max_attempts: int = 3
    # Scheduled retraining (`ichtriage admin retrain` in its own process, at nice 10): off
    # while retrain_cron is empty; a crontab line in UTC, e.g. "0 2 * * 0" (Sundays 02:00).
    retrain_cron: str = ""
    retrain_dicom_dir: Path | None = None  # training images (<image id>.dcm) ...
    retrain_labels: Path | None = None  # ... and their labels, RSNA CSV
    retrain_heldout_dir: Path | None = None  # the fixed held-out set of the gate ...
    retrain_heldout_labels: Path | None = None  # ... and its labels
    retrain_arch: str = "ichnet"
    retrain_epochs: int = 3
    retrain_device: str = "cpu"  # its own device: triage keeps the GPU
    retrain_metric: str = "weighted_log_loss"  # or auc_any: what "better" means to the gate
    # A tick trains only after this many feedback labels since the last retraining's start,
    # on the node's feedback export as well as retrain_dicom_dir; 0: at every tick.
    retrain_min_new_labels: int = 20

    def __post_init__(self) -> None:
        _check_ae(self.ae_title, "ae_title")
        for name in ("port", "http_port"):
            value = getattr(self, name)
            if not 0 <= value < 65536:
                raise ConfigError(f"{name}: {value} is not a TCP port")
        if self.settle_seconds < 0 or self.aborted_wait_seconds < 0:
            raise ConfigError("settle_seconds and aborted_wait_seconds must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_ca needs tls_cert and tls_key")
        if self.receivers < 0 or self.min_slices < 1 or self.min_free_mb < 0:
            raise ConfigError("receivers and min_free_mb must be >= 0, min_slices >= 1")
        if self.workers < 0 or self.batch_size < 1 or self.job_max_attempts < 1:
            raise ConfigError("workers must be >= 0, batch_size and job_max_attempts >= 1")
        if self.min_coverage_mm < 0:
            raise ConfigError(f"min_coverage_mm must be >= 0, got {self.min_coverage_mm}")
        if self.max_pdu != 0 and not 4096 <= self.max_pdu <= 1 << 26:
            raise ConfigError(f"max_pdu must be 0 or 4096-67108864 bytes, got {self.max_pdu}")
        if (self.max_message_mb < 1 or self.max_associations < 1
                or self.max_associations_per_host < 1):
            raise ConfigError("max_message_mb, max_associations and max_associations_per_host "
                              "must be >= 1")
        if self.association_request_timeout <= 0 or self.network_timeout <= 0:
            raise ConfigError("association_request_timeout and network_timeout must be > 0")
        if self.receive_path not in ("fast", "stock"):
            raise ConfigError(f"receive_path must be 'fast' or 'stock', got "
                              f"{self.receive_path!r}")
        if self.default_character_set and (
                self.default_character_set not in charset.python_encoding):
            raise ConfigError(f"default_character_set: {self.default_character_set!r} is not "
                              "a Specific Character Set defined term (PS3.3 C.12.1.1.2), e.g. "
                              "'ISO_IR 100', 'ISO_IR 192', 'GB18030'")
        for name in ("allow_store_ae", "allow_query_ae"):
            never = [str(p) for p in getattr(self, name)
                     if self.allow_ae and not p.within(self.allow_ae)]
            if never:
                raise ConfigError(f"{name}: {', '.join(never)} can never associate: not in "
                                  f"allow_ae ({', '.join(map(str, self.allow_ae))})")
        titles = [d.ae_title for d in self.move_destination]
        if len(set(titles)) != len(titles):
            raise ConfigError(f"move_destination: an AE title given twice in {titles}")
        if not 0 < self.delivery_retry_seconds <= self.delivery_retry_max_seconds:
            raise ConfigError("delivery_retry_seconds must be > 0 and at most "
                              f"delivery_retry_max_seconds, got {self.delivery_retry_seconds} "
                              f"and {self.delivery_retry_max_seconds}")
        if self.job_lease_seconds <= 0:
            raise ConfigError(f"job_lease_seconds must be > 0, got {self.job_lease_seconds}")
        self._check_retraining()

    def _check_retraining(self) -> None:
        if self.retrain_metric not in ("weighted_log_loss", "auc_any"):
            raise ConfigError(f"retrain_metric must be weighted_log_loss or auc_any, got "
                              f"{self.retrain_metric!r}")
        if self.retrain_epochs < 1:
            raise ConfigError(f"retrain_epochs must be >= 1, got {self.retrain_epochs}")
        if self.retrain_min_new_labels < 0:
            raise ConfigError(f"retrain_min_new_labels must be >= 0, got "
                              f"{self.retrain_min_new_labels}")
        if not self.retrain_cron:
            return
        if len(self.retrain_cron.split()) != 5:
            raise ConfigError(f"retrain_cron: {self.retrain_cron!r} is not a crontab line of "
                              "five fields (minute hour day month weekday)")
        missing = [name for name in ("retrain_dicom_dir", "retrain_labels",
                                     "retrain_heldout_dir", "retrain_heldout_labels")
                   if getattr(self, name) is None]
        if missing:
            raise ConfigError(f"retrain_cron is set: {', '.join(missing)} must be set too")

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'ichtriage.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "data"

    @property
    def models_dir(self) -> Path:
        """Where the model registry keeps the checkpoints it imported (storage.registry)."""
        return self.data_dir / "models"

    @property
    def delivery_retry(self) -> RetryPolicy:
        """The outbox's retry policy: DELIVERY_RETRY with this installation's waits."""
        return dataclasses.replace(DELIVERY_RETRY, backoff_seconds=self.delivery_retry_seconds,
                                   max_backoff_seconds=self.delivery_retry_max_seconds)

    @property
    def receiver_count(self) -> int:
        return self.receivers or (os.cpu_count() or 1)


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def load_settings(*, config_file: Path | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Defaults < TOML file < environment < overrides (the command line)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    config_file = config_file or (Path(env[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in env
                                  else None)
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        unknown = set(data) - set(setting_names())
        if unknown:
            raise ConfigError(f"config file {config_file}: unknown settings {sorted(unknown)}"
                              f"{_did_you_mean(unknown, setting_names())}")
        raw.update(data)
    known_env = {ENV_PREFIX + name.upper() for name in setting_names()} | {f"{ENV_PREFIX}CONFIG"}
    unknown_env = {key for key in env if key.startswith(ENV_PREFIX)} - known_env
    if unknown_env:
        raise ConfigError(f"unknown environment variables {sorted(unknown_env)}"
                          f"{_did_you_mean(unknown_env, known_env)}")
    for name in setting_names():
        key = ENV_PREFIX + name.upper()
        if key in env:
            raw[name] = env[key]
    for name, value in (overrides or {}).items():
        if value is not None and value != ():
            raw[name] = value
    hints = get_type_hints(Settings)
    values = {name: _convert(name, hints[name], value) for name, value in raw.items()}
    try:
        return Settings(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def _did_you_mean(unknown: Iterable[str], known: Iterable[str]) -> str:
    known = list(known)
    guesses = [f"{u} -> {close[0]}" for u in sorted(unknown)
               for close in [difflib.get_close_matches(u, known, n=1)] if close]
    return f" (did you mean: {'; '.join(guesses)}?)" if guesses else ""


def _convert(name: str, hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    try:
        if origin in (Union, types.UnionType):
            inner = [a for a in get_args(hint) if a is not type(None)][0]
            return None if value in (None, "") else _convert(name, inner, value)
        if origin is tuple:
            inner = get_args(hint)[0]
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [i.strip() if isinstance(i, str) else i for i in items]
            if inner is not str:
                items = [i for i in items if i != ""]
            return tuple(_convert(name, inner, i) for i in items)
        if hint in (Destination, AllowedPeer):
            return value if isinstance(value, hint) else hint.parse(str(value))
        if hint is Path:
            return Path(value)
        if hint is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if hint in (int, float):
            return hint(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{name}: cannot use {value!r}: {exc}") from exc
    raise ConfigError(f"{name}: unsupported setting type {hint}")


def describe(settings: Settings) -> dict[str, str]:
    """The settings as strings, for the start-up log (nothing secret is in them)."""
    return {k: (", ".join(map(str, v)) if isinstance(v, tuple) else str(v))
            for k, v in dataclasses.asdict(settings).items()} | {
        "allow_ae": ", ".join(map(str, settings.allow_ae)) or "(any)",
        "destinations": ", ".join(map(str, settings.destinations)) or "(none)",
        "allow_store_ae": ", ".join(map(str, settings.allow_store_ae)) or "(any allowed)",
        "allow_query_ae": ", ".join(map(str, settings.allow_query_ae)) or "(any allowed)",
        "move_destination": ", ".join(map(str, settings.move_destination)) or "(none)",
    }


__all__ = ["AllowedPeer", "ConfigError", "Destination", "Settings", "describe", "load_settings"]
