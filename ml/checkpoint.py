"""One-file checkpoints that carry their own model card.

File layout (torch.save): {"format": 1, "card": dict, "state_dict": {name: tensor}}, plus
`<file>.json` holding the same card for people. The card alone rebuilds the model; loading
checks the format, the label order, the sha256 of the weights and the state_dict's fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pickle
import subprocess
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml.errors import ModelError
from ml.labels import LABELS
from ml.models import architecture, build_model

logger = logging.getLogger(__name__)

FORMAT = 1
FIELD_OF_VIEW_MM = (50.0, 1000.0)  # a card's field_of_view_mm must lie in this range
INTENDED_USE = (
    "Research prototype: flags non-contrast head CT series that may show intracranial "
    "hemorrhage to reorder a reading worklist. Not a diagnosis; NOT FOR CLINICAL USE."
)


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, feed and judge a model (labels in LABELS order)."""

    architecture: str
    labels: tuple[str, ...]
    in_channels: int  # len(windows) * (2 * context + 1)
    input_size: int  # square side the model sees, after the fit and resize
    windows: tuple[str, ...]  # names in ml.windowing.WINDOWS, channel order
    context: int  # neighbour slices each side stacked as channels (2.5D)
    thresholds: dict[str, float]  # per label: called positive at probability >= threshold
    training_data: str  # free text, e.g. "synthetic phantoms, seed 1, 400 studies"
    intended_use: str = INTENDED_USE
    metrics: dict[str, Any] = field(default_factory=dict)  # JSON-friendly, e.g. Metrics.to_dict()
    code_version: str = ""  # filled by save_checkpoint when empty
    created_at: str = ""  # ISO 8601 UTC, filled by save_checkpoint when empty
    sha256: str = ""  # of the state_dict, set by save_checkpoint
    temperature: dict[str, float] = field(default_factory=dict)  # per label: sigmoid(logit / T);
    # a label not named has T = 1 (ml.calibration fits them on validation data)
    # Side (mm) of the square, centred on each slice, resized to input_size: the slice's own
    # PixelSpacing decides how many pixels that is (ml.windowing.fit_shape). None: 512 pixels
    # whatever their size, as models were trained before session 12.
    field_of_view_mm: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "windows", tuple(self.windows))
        architecture(self.architecture)  # ValueError for an unknown name
        if not self.windows:
            raise ValueError("windows: need at least one window")
        if self.context < 0:
            raise ValueError(f"context: must be >= 0, got {self.context}")
        if self.in_channels != len(self.windows) * (2 * self.context + 1):
            raise ValueError(
                f"in_channels: {self.in_channels} != {len(self.windows)} windows x "
                f"{2 * self.context + 1} slices"
            )
        if set(self.thresholds) != set(self.labels):
            raise ValueError(f"thresholds: need one per label {self.labels}")
        if not all(0.0 <= float(t) <= 1.0 for t in self.thresholds.values()):
            raise ValueError(f"thresholds: must lie in [0, 1], got {self.thresholds}")
        if set(self.temperature) - set(self.labels):
            raise ValueError(f"temperature: unknown labels {sorted(set(self.temperature) - set(self.labels))}")
        if not all(0.0 < float(t) < math.inf for t in self.temperature.values()):
            raise ValueError(f"temperature: must be positive and finite, got {self.temperature}")
        if self.input_size < architecture(self.architecture).min_input_size:
            raise ValueError(f"input_size: too small for {self.architecture}: {self.input_size}")
        if self.field_of_view_mm is not None and not (
                FIELD_OF_VIEW_MM[0] <= float(self.field_of_view_mm) <= FIELD_OF_VIEW_MM[1]):
            raise ValueError(f"field_of_view_mm: must lie in {list(FIELD_OF_VIEW_MM)} mm, "
                             f"got {self.field_of_view_mm}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def temperatures(self) -> tuple[float, ...]:
        """One temperature per label, in label order (1.0 where the card names none)."""
        return tuple(float(self.temperature.get(name, 1.0)) for name in self.labels)

    @classmethod
    def new(
        cls,
        architecture_name: str,
        *,
        windows: tuple[str, ...],
        training_data: str,
        context: int | None = None,
        input_size: int | None = None,
        thresholds: Mapping[str, float] | None = None,
        **rest: Any,
    ) -> ModelCard:
        """A card for LABELS with the architecture's defaults and thresholds 0.5."""
        spec = architecture(architecture_name)
        context = spec.context if context is None else context
        return cls(
            architecture=architecture_name,
            labels=LABELS,
            in_channels=len(windows) * (2 * context + 1),
            input_size=spec.input_size if input_size is None else input_size,
            windows=tuple(windows),
            context=context,
            thresholds=dict(thresholds) if thresholds else dict.fromkeys(LABELS, 0.5),
            training_data=training_data,
            **rest,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"], data["windows"] = list(self.labels), list(self.windows)
        data["num_labels"] = self.num_labels
        if not self.temperature:  # uncalibrated (T = 1): written as cards were before
            del data["temperature"]
        if self.field_of_view_mm is None:  # fitted by pixels: written as cards were before
            del data["field_of_view_mm"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Rebuild a card; ModelError when a field is missing, unknown or invalid."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k != "num_labels"}
        if set(values) - names:
            raise ModelError(f"model card: unknown fields {sorted(set(values) - names)}")
        try:
            card = cls(**values)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model card: {exc}") from exc
        if data.get("num_labels", card.num_labels) != card.num_labels:
            raise ModelError("model card: num_labels does not match labels")
        return card


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def code_version() -> str:
    """Package version, plus the git commit when the code runs from a checkout."""
    try:
        version = metadata.version("ichtriage")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return f"ichtriage {version}"
    return f"ichtriage {version} (git {commit})"


def _build(card: ModelCard) -> nn.Module:
    return build_model(
        card.architecture, num_labels=card.num_labels, in_channels=card.in_channels,
        input_size=card.input_size,
    )  # fmt: skip


def _check_fit(card: ModelCard, state_dict: Mapping[str, torch.Tensor]) -> None:
    """ModelError unless state_dict has exactly the tensors the card's architecture needs."""
    with torch.device("meta"):  # shapes only, no memory
        expected = {k: tuple(v.shape) for k, v in _build(card).state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected != actual:
        missing = sorted(set(expected) - set(actual))[:5]
        extra = sorted(set(actual) - set(expected))[:5]
        shapes = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])[:5]
        raise ModelError(
            f"weights do not fit {card.architecture} as carded: missing {missing}, "
            f"unexpected {extra}, wrong shape {shapes}"
        )


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model: nn.Module, card: ModelCard) -> ModelCard:
    """Write model + card to `path` (and the card to `<path>.json`); return the final card.

    The returned card has sha256 set, and code_version / created_at filled when empty.
    """
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _check_fit(card, state_dict)
    card = dataclasses.replace(
        card,
        sha256=weights_sha256(state_dict),
        code_version=card.code_version or code_version(),
        created_at=card.created_at or datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "card": card.to_dict(), "state_dict": state_dict}
    _write_atomic(path, lambda tmp: torch.save(payload, tmp))
    text = json.dumps(card.to_dict(), indent=2, allow_nan=False) + "\n"
    _write_atomic(card_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    logger.info("saved %s checkpoint %s (sha256 %s)", card.architecture, path, card.sha256[:12])
    return card


def card_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_checkpoint(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Card and verified weights of a checkpoint file, without building the model."""
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    return _parse_checkpoint(path, path)


def _unreadable(source: Path | io.BytesIO, exc: BaseException) -> str:
    """Why torch.load(weights_only=True) failed, in the node's words (torch's own message
    advises loading without weights_only, which a node must never do with a file it got)."""
    if isinstance(source, io.BytesIO):
        head = source.getvalue()[:4]
    else:
        with source.open("rb") as f:
            head = f.read(4)
    if not head:
        return "the file is empty"
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        return "not a checkpoint (not a PyTorch zip archive)"
    if isinstance(exc, pickle.UnpicklingError):
        return ("not a checkpoint of this node: it holds objects other than tensors and plain "
                "values (it is only ever loaded with weights_only)")
    return "truncated or damaged (its zip archive cannot be read)"


def _parse_checkpoint(source: Path | io.BytesIO,
                      path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, LookupError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:  # fmt: skip  # a text file: IndexError or KeyError
        raise ModelError(f"cannot read checkpoint {path}: {_unreadable(source, exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a format-{FORMAT} checkpoint")
    if not isinstance(payload.get("card"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise ModelError(f"{path}: checkpoint lacks its card or state_dict")
    card = ModelCard.from_dict(payload["card"])
    state_dict: dict[str, torch.Tensor] = payload["state_dict"]
    if card.labels != LABELS:
        raise ModelError(f"{path}: label order {card.labels} differs from {LABELS}")
    if weights_sha256(state_dict) != card.sha256:
        raise ModelError(f"{path}: weights do not match the card's sha256 (altered or corrupt)")
    _check_fit(card, state_dict)
    return card, state_dict


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint file that passed `verify_checkpoint`."""

    card: ModelCard
    file_sha256: str  # of the file's bytes, as they were read


def verify_checkpoint(path: Path) -> VerifiedCheckpoint:
    """The validating reader for a model registry's import: refuses a file that is not what it
    claims (ModelError naming the problem). Beyond `read_checkpoint` (format, card fields,
    label order, the weights' sha256, their fit to the carded architecture), the weights are
    loaded into the card's model, and the card beside the file (`<file>.json`), when there,
    must be the card inside it."""
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    data = _read_bytes(path)  # read once: the bytes judged are the bytes hashed
    card, state_dict = _parse_checkpoint(io.BytesIO(data), path)
    side = card_path(path)
    if side.is_file():
        try:
            beside = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{side}: the card beside the checkpoint is unreadable: {exc}") from exc
        inside = json.loads(json.dumps(card.to_dict()))
        if beside != inside:
            differ = sorted(k for k in set(beside) | set(inside) if beside.get(k) != inside.get(k))
            raise ModelError(f"{side}: the card beside the checkpoint differs from the one inside "
                             f"it ({', '.join(differ)})")
    model = _build(card)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not load into {card.architecture}: {exc}") from exc
    return VerifiedCheckpoint(card, hashlib.sha256(data).hexdigest())


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"checkpoint {path}: cannot read it: {exc.strerror or exc}") from exc


def load_checkpoint(path: Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """The model (eval mode, on `device`) and its card; ModelError on any mismatch."""
    card, state_dict = read_checkpoint(path)
    model = _build(card)
    model.load_state_dict(state_dict)
    return model.to(device).eval(), card
