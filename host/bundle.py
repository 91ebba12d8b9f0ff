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


def node_tables(files: dict[str, Path]) -> dict[str, list[list[str]]]:
    """[name, op] of every node of each ONNX file: lets the device name the node a parser rejects."""
    import onnx

    tables = {}
    for name, path in files.items():
        if name.endswith(".onnx"):
            graph = onnx.load(str(path), load_external_data=False).graph
            tables[name] = [[node.name, node.op_type] for node in graph.node]
    return tables


def make_manifest(config: Config, device: DeviceSection, files: dict[str, Path], host: dict[str, Any]) -> dict:
    """Everything the agent needs to build, validate and benchmark, as plain data."""
    build: dict[str, Any] = {"allow_fallback": device.allow_fallback}
    if device.threads:
        build["threads"] = device.threads
    if device.backend == "tensorrt":
        build.update(int8_mode=device.int8_mode, workspace_mb=device.workspace_mb)
        build.update({k: v for k, v in (("dla_core", device.dla_core),
                                        ("builder_optimization_level", device.builder_optimization_level))
                      if v is not None})
    benchmark = config.benchmark.model_dump()
    if device.backend == "tensorrt":
        benchmark.update(cuda_graph=device.cuda_graph, profile_layers=device.profile_layers)
    validation = {k: v for k, v in config.validation.model_dump().items() if v is not None}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": config.project.name,
        "edgekit_version": __version__,
        "input": {"name": config.input.name, "shape": config.input.shape, "dtype": "float32",
                  "batch_sizes": config.input.batch_sizes, "normalization": host.get("normalization")},
        "outputs": [{"name": "logits", "classes": config.model.num_classes}],
        "target": {"backend": device.backend, "precision": device.precision, "build": build,
                   "benchmark": benchmark, "validation": validation},
        "files": file_entries(files),
        "host": dict(host, graphs=node_tables(files)),
    }
    parsed = parse_manifest(manifest)
    needed = model_for(parsed)
    if needed not in files:
        raise ConfigError(f"{config.path.name}: precision {device.precision!r} on {device.backend} needs {needed}, "
                          "which this version does not produce yet; use precision = \"fp32\"")
    return manifest


def manifest_bytes(manifest: dict) -> bytes:
    return canonical_bytes(manifest)
