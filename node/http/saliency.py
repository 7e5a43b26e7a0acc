"""Heat maps for the HTTP side: the active model, loaded on first use in this process (a
copy of its own: the workers' model is never touched), one map at a time.

A map is made only by the model that made the result: a result of another checkpoint is
refused (409) rather than explained by a model that did not make it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ml.windowing import load_slice

if TYPE_CHECKING:
    from ml.inference import Classifier


class ModelMismatch(Exception):
    def __init__(self, result_version: str, active_version: str) -> None:
        super().__init__(f"the result was made by model {result_version}; the active model "
                         f"is {active_version}")


@dataclass
class HeatMaps:
    model_path: Path
    device: str = "cpu"
    _classifier: Classifier | None = None
    _stamp: tuple[int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _model(self) -> Classifier:
        from ml.inference import Classifier

        st = self.model_path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if self._classifier is None or stamp != self._stamp:
            self._classifier = Classifier.load(self.model_path, device=self.device)
            self._stamp = stamp
        return self._classifier

    def heat(self, files: list[Path], frames: list[int], index: int, label: str,
             model_version: str) -> tuple[np.ndarray, np.ndarray]:
        """(HU of slice `index`, its heat map in [0, 1]) for the series `files`/`frames`."""
        from ml.saliency import heat_on_slice

        slices = [load_slice(path)[1][frame] for path, frame in zip(files, frames, strict=True)]
        with self._lock:
            classifier = self._model()
            active = classifier.card.sha256[:12]
            if active != model_version:
                raise ModelMismatch(model_version, active)
            heat = heat_on_slice(classifier, slices, index, label)
        return slices[index], heat
