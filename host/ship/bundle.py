"""Assemble a bundle's manifest for one device from the optimised artefacts, and sign it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ...device import __version__
from ...device.contract.budget import target_limit
from ...device.contract.manifest import SCHEMA_VERSION, canonical_bytes, parse_manifest, sha256_file
from ...device.contract.model_files import ModelChoiceError, candidates, needed_files, unused_files
from ...device.contract.runtimes import AUTO, benchmark_keys, build_keys, cpu_runtimes, fallback_runtime
from ..config import Config, DeviceSection
from ..errors import ConfigError


def file_entries(files: dict[str, Path]) -> list[dict[str, Any]]:
    entries = []
    for name, path in sorted(files.items()):
        info = Path(path).stat()
        entries.append({"name": name, "sha256": _sha256(str(path), info.st_size, info.st_mtime_ns),
                        "size": info.st_size})
    return entries


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per file version, not once per device of a fleet (a rewritten file has a new mtime)."""
    return sha256_file(path)


def node_tables(files: dict[str, Path]) -> dict[str, list[list[str]]]:
    """[name, op] of every node of each ONNX file: lets the device name the node a parser rejects."""
    tables = {}
    for name, path in files.items():
        if name.endswith(".onnx"):
            info = Path(path).stat()
            tables[name] = [list(row) for row in _node_table(str(path), info.st_size, info.st_mtime_ns)]
    return tables


@functools.lru_cache(maxsize=64)
def _node_table(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    """Parsed once per file version (a fleet's devices share the files: one parse per rollout, not per device)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return tuple((node.name, node.op_type) for node in graph.node)


# When the device did not say what CPU it has, ship the INT8 files for both kinds (see model_files).
_EITHER_CPU = ({"flags_read": True, "u8s8_saturates": True}, {"flags_read": True, "u8s8_saturates": False})


def device_backends(device: DeviceSection, info: dict[str, Any] | None) -> list[str]:
    """The backends the device may run this job on, from its status (unknown: every CPU runtime)."""
    reported = (info or {}).get("backends")
    have = [name for name, about in reported.items() if about.get("available")] if reported else list(cpu_runtimes())
    chosen = candidates(device.backend, have) or list(cpu_runtimes())
    if device.allow_fallback:  # the agent may fall back to another runtime, which must find its files too
        for fallback in [fallback_runtime(name) for name in chosen]:
            if fallback is not None and fallback not in chosen:
                chosen.append(fallback)
    return chosen


def device_cpus(info: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The device's CPU from its status; unknown: both kinds model_files tells apart (INT8 files for each)."""
    return [info["cpu"]] if info and info.get("cpu") else list(_EITHER_CPU)


def files_for_device(config: Config, device: DeviceSection, files: dict[str, Path],
                     info: dict[str, Any] | None) -> dict[str, Path]:
    """Only what the device will read: model_files decides, from the device's backends and CPU (its status)."""
    backends = device_backends(device, info)
    cpus = device_cpus(info)
    required = "fp32" if device.precision == AUTO else device.precision  # auto ships the others where they exist
    try:
        needed = {name for cpu in cpus
                  for name in needed_files(backends, required, device.int8_mode, cpu, shipped=files)}
    except ModelChoiceError as exc:
        raise ConfigError(f"{config.path.name}: devices: {exc}") from None
    absent = sorted(needed - set(files))
    if absent:
        raise ConfigError(f"{config.path.name}: precision {device.precision!r} on {device.backend} needs "
                          f"{', '.join(absent)}, which this project does not produce (quantize.enabled = true writes "
                          "the INT8 files); or use precision = \"fp32\"")
    unused = set.intersection(*(set(unused_files(files, backends, device.precision, device.int8_mode, cpu))
                                for cpu in cpus))
    return {name: path for name, path in files.items() if name not in unused}


def build_settings(device: DeviceSection) -> dict[str, Any]:
    """The manifest's ``target.build``: what the device's deploy.toml keys ask of its runtime's build."""
    build: dict[str, Any] = {"allow_fallback": device.allow_fallback}
    if device.threads:
        build["threads"] = device.threads
    # the runtime's own keys (the contract's table says which); they are part of the device's engine key
    build.update({key: getattr(device, key) for key in build_keys(device.backend) if getattr(device, key) is not None})
    return build


def latency_budget(host: dict[str, Any]) -> dict[str, Any]:
    """A pruning latency target as a budget entry: the agent keeps the active model when the median misses it."""
    latency = (host.get("pruning") or {}).get("latency")
    return target_limit(latency["target_ms"], latency["batch"], latency.get("target_speedup")) if latency else {}


def make_manifest(config: Config, device: DeviceSection, files: dict[str, Path], host: dict[str, Any],
                  device_info: dict[str, Any] | None = None) -> dict:
    """Everything the agent needs to build, validate and benchmark, as plain data; ``device_info`` (the
    agent's status) narrows the files to those its backend will read on its CPU."""
    files = files_for_device(config, device, files, device_info)
    build = build_settings(device)
    benchmark = config.benchmark.model_dump()
    benchmark.update({key: getattr(device, key) for key in benchmark_keys(device.backend)})
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
        "budget": dict({k: v for k, v in config.budget.model_dump().items() if v is not None},  # checked on the device
                       **latency_budget(host)),
        "host": dict(host, graphs=node_tables(files)),
    }
    parse_manifest(manifest)
    return manifest


def manifest_bytes(manifest: dict) -> bytes:
    return canonical_bytes(manifest)
