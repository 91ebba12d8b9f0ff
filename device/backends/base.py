"""The backend interface: build an engine once, load it, run and benchmark it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

from ..benchmark import Plan

Progress = Callable[[str], None]


class BackendUnavailable(RuntimeError):
    """The backend's runtime is not installed or cannot run on this device."""


class Engine:
    """A loaded engine. Subclasses run one batch; the benchmark loop lives in ``benchmark.py``."""

    def run(self, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def benchmark(self, batch: int, plan: Plan, **options: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release device memory; the default has nothing to release."""


class Backend:
    name = "base"

    def describe(self) -> Dict[str, Any]:
        """Versions and capabilities, for `edgekit device check` and reports."""
        raise NotImplementedError

    def identity(self) -> Dict[str, Any]:
        """Everything an engine depends on besides the bundle: goes into the engine cache key."""
        raise NotImplementedError

    def build(self, model: Path, engine_dir: Path, options: Dict[str, Any], progress: Progress) -> Dict[str, Any]:
        """Write the engine's artefacts into ``engine_dir`` and return metadata for engine.json."""
        raise NotImplementedError

    def load(self, engine_dir: Path, meta: Dict[str, Any]) -> Engine:
        raise NotImplementedError
