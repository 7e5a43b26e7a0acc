"""Heat maps for the HTTP side: the active model, loaded on first use in this process (a
copy of its own: the workers' model is never touched), one map at a time.

A map is made only by the model that made the result (its registry entry, whichever model
is active now); a result no registered model made is refused (409) rather than explained by
a model that did not make it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ml.planes import pixel_spacing_of
from ml.windowing import load_slice

if TYPE_CHECKING:
    from ml.inference import Classifier
    from storage.registry import ModelRegistry


class ModelMismatch(Exception):
    """The model that made the result cannot explain it here (no registry entry, or its file
    is not the one registered)."""


@dataclass
class HeatMaps:
    """Grad-CAM by the model that made the result: its registry entry's file, checked
    against the registered sha256, loaded on first use and kept while the next request asks
    for the same model (one model in memory)."""

    registry: ModelRegistry
    device: str = "cpu"
    _classifier: Classifier | None = None
    _sha256: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _model(self, model_pk: int | None, model_version: str) -> Classifier:
        from ml.inference import Classifier
        from storage.registry import UnknownModelError, file_sha256

        if model_pk is None:
            raise ModelMismatch(f"the result (model {model_version}) was made before the model "
                                "registry: no model to explain it")
        try:
            entry = self.registry.by_pk(model_pk)
        except UnknownModelError as exc:
            raise ModelMismatch(f"the model of the result is not in the registry: {exc}") from None
        if self._classifier is None or self._sha256 != entry.file_sha256:
            if file_sha256(entry.file_path) != entry.file_sha256:
                raise ModelMismatch(f"model {entry.name} {entry.version}: its file is not the "
                                    "one registered")
            self._classifier = Classifier.load(entry.file_path, device=self.device)
            self._sha256 = entry.file_sha256
        return self._classifier

    def heat(self, files: list[Path], frames: list[int], index: int, label: str,
             model_version: str, model_pk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(HU of slice `index`, its heat map in [0, 1]) for the series `files`/`frames`,
        by the registry entry `model_pk` that made the result. Raises ModelMismatch."""
        from ml.saliency import heat_on_slice

        loaded = [load_slice(path) for path in files]
        slices = [hu[frame] for (_, hu), frame in zip(loaded, frames, strict=True)]
        spacing = pixel_spacing_of(loaded[index][0])
        with self._lock:
            classifier = self._model(model_pk, model_version)
            heat = heat_on_slice(classifier, slices, index, label, pixel_spacing=spacing)
        return slices[index], heat
