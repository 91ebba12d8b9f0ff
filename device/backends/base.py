"""The backend interface: build an engine once, load it, run and benchmark it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from ..benchmark import Plan
from ..contract.runtimes import Runtime, runtime

Progress = Callable[[str], None]


PROFILE_RUNS = 30  # runs under a runtime's per-layer profiler; the first third (allocations, thread start) not counted


def median_per_layer(runs: Dict[str, list], runs_done: int = PROFILE_RUNS) -> Dict[str, float]:
    """Each profiled layer's median ms over its runs after the first third of ``runs_done``."""
    skip = runs_done // 3
    return {name: float(np.median(times[skip:] or times)) for name, times in runs.items()}


class BackendUnavailable(RuntimeError):
    """The backend's runtime is not installed or cannot run on this device."""


class Engine:
    """A loaded engine. Subclasses run one batch; the benchmark loop lives in ``benchmark.py``."""

    def run(self, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def benchmark(self, batch: int, plan: Plan, **options: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def executed_precision(self) -> Optional[str]:
        """The precision the runtime says this engine runs, where it can say (OpenVINO); None: as built."""
        return None

    def close(self) -> None:
        """Release device memory; the default has nothing to release."""


class Backend:
    """One runtime on this device. What the host must know about it too is the contract's (``runtime``);
    the methods below answer what only the device knows, so job code never asks for a backend by name."""

    name = "base"

    @property
    def runtime(self) -> Runtime:
        """This runtime's entry in the contract's table: the files it reads, its benchmark switches..."""
        return runtime(self.name)

    def job_options(self, agent_root: Path, engines: Path, files: Mapping[str, Path]) -> Dict[str, Any]:
        """Build options only the device knows: caches kept across jobs, the bundle's files on disk. They stay
        out of the engine key (a cache's place does not change what is built); none by default."""
        return {}

    def benchmark_options(self, settings: Mapping[str, Any]) -> Dict[str, bool]:
        """The manifest's benchmark switches this runtime's engines take (declared in the contract)."""
        return {key: bool(settings[key]) for key in self.runtime.benchmark_extras if key in settings}

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
