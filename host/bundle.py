"""Assemble a bundle's manifest for one device from the optimised artefacts, and sign it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.device import __version__
from edgekit.device.manifest import SCHEMA_VERSION, canonical_bytes, model_for, parse_manifest, sha256_file

from .config import Config, DeviceSection
from .errors import ConfigError


def file_entries(files: dict[str, Path]) -> list[dict[str, Any]]:
    return [{"name": name, "sha256": sha256_file(path), "size": path.stat().st_size}
            for name, path in sorted(files.items())]


def make_manifest(config: Config, device: DeviceSection, files: dict[str, Path], host: dict[str, Any]) -> dict:
    """Everything the agent needs to build, validate and benchmark, as plain data."""
    build: dict[str, Any] = {"allow_fallback": device.allow_fallback}
    if device.threads:
        build["threads"] = device.threads
    validation = {k: v for k, v in config.validation.model_dump().items() if v is not None}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": config.project.name,
        "edgekit_version": __version__,
        "input": {"name": config.input.name, "shape": config.input.shape, "dtype": "float32",
                  "batch_sizes": config.input.batch_sizes, "normalization": host.get("normalization")},
        "outputs": [{"name": "logits", "classes": config.model.num_classes}],
        "target": {"backend": device.backend, "precision": device.precision, "build": build,
                   "benchmark": config.benchmark.model_dump(), "validation": validation},
        "files": file_entries(files),
        "host": host,
    }
    parsed = parse_manifest(manifest)
    needed = model_for(parsed)
    if needed not in files:
        raise ConfigError(f"{config.path.name}: precision {device.precision!r} on {device.backend} needs {needed}, "
                          "which this version does not produce yet; use precision = \"fp32\"")
    return manifest


def manifest_bytes(manifest: dict) -> bytes:
    return canonical_bytes(manifest)
