"""Measure a device's latency model of the project's model (``[prune] target_latency_ms``), before optimising.

The host writes one small ONNX file per layer variant and a few whole-model variants, sends them as a signed
``latency_model`` job (files by sha256, the plan in the manifest: data, no code), and keeps the table the agent
returns beside the layers it describes, in ``.edgekit/latency/``. The prune stage reads that file (its content is
part of the stage's key). The agent caches tables per device, backend, precision, graph and batch: the second
push of a project measures nothing, and uploads nothing (the files are content-addressed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ...device import __version__
from ...device.contract.manifest import SCHEMA_VERSION, canonical_bytes, parse_manifest
from ...device.contract.protocol import LATENCY_MODEL
from ..config import Config, DeviceSection, host_home
from ..errors import CheckFailed, ConfigError
from ..optimize.prune.latency import (
    BASELINE,
    GroupSpace,
    Layer,
    describe_layers,
    graph_hash,
    group_space,
    layer_onnx,
    layer_variants,
    whole_widths,
)
from .bundle import file_entries

Say = Callable[[str], None]
EventSink = Callable[[dict[str, Any]], None]
ITERATIONS = 7  # timed runs per layer variant (after 3 untimed); whole models: 5 rounds of twice that


def check_target(config: Config, device: DeviceSection, device_name: str) -> None:
    """What a latency target needs, checked before any work: one line naming the key and the fix."""
    section = config.prune
    if section.target_batch not in config.input.batch_sizes:
        raise ConfigError(f"{config.path.name}: prune.target_batch = {section.target_batch} is not among "
                          f"input.batch_sizes {config.input.batch_sizes}, so the device would not measure it; add it")
    if device.precision in ("int8", "auto"):
        raise ConfigError(f"{config.path.name}: prune.target_latency_ms/target_speedup: the latency model is "
                          f"measured at fp32/fp16 for now and {device_name} deploys precision = "
                          f"\"{device.precision}\"; use prune.ratio there, or precision = \"fp32\" (or \"fp16\")")


def latency_model_file(config: Config, device_name: str, say: Say, on_event: EventSink) -> Path:
    """The device's latency model of the project's model: the layers, the widths searched and the table."""
    import torch

    from ..optimize.load import load_trained, normalization
    from ..optimize.prune.stage import PROBE_IMAGES
    from ..optimize.prune.structured import PruneSpec, prunable
    from ..train.data import normalize
    from ..train.project import load_data

    device = config.device(device_name)
    check_target(config, device, device_name)
    data = load_data(config)
    model, _ = load_trained(config)
    mean, std = normalization(config, data)
    spec = PruneSpec(**config.prune.model_dump(), output=config.model.output, num_classes=config.model.num_classes)
    example = torch.zeros(1, *config.input.shape)
    batch = torch.from_numpy(normalize(data.train.images[:PROBE_IMAGES], mean, std))
    graph, protect, _, groups = prunable(model.eval(), spec, example, batch, say)
    spaces = {g.name: group_space(g.name, g.width, spec.round_to, g.ch_groups, spec.max_layer_ratio) for g in groups}
    layers = describe_layers(model, graph, groups, example)
    folder = config.state_dir / "latency"
    files, plan = write_variants(model, protect, layers, spaces, config, folder / "files")
    say(f"latency model of {len(layers)} layers in {len(groups)} prunable groups: {len(plan)} variants to time on "
        f"{device_name} at batch {config.prune.target_batch} (bounded by prune.latency_budget_s = "
        f"{config.prune.latency_budget_s:.0f} s; cached there after the first push)")
    graph_id = graph_hash(layers, spaces)
    # the file is the prune stage's input: only what the table says goes in (not whether it was measured now)
    report = run_job(config, device_name, device, files, plan, graph_id, say, on_event)
    saved = {"device": device_name, "backend": report.get("backend"), "precision": report.get("precision"),
             "batch": report.get("batch"), "table_key": report.get("table_key"), "graph": graph_id,
             "baseline_ms": report["ms"].get(BASELINE),
             "layers": [asdict(layer) for layer in layers], "spaces": [asdict(s) for s in spaces.values()],
             "table": report["ms"]}
    path = folder / f"{device_name}-{graph_id[:16]}-b{config.prune.target_batch}.json"
    path.write_text(json.dumps(saved, indent=1, sort_keys=True))
    return path


def write_variants(model: Any, protect: list[str], layers: list[Layer], spaces: dict[str, GroupSpace],
                   config: Config, folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Every variant's ONNX file (named by content) and the plan: variant id → file name."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    plan: dict[str, str] = {}
    for ident, (layer, cin, cout) in layer_variants(layers, spaces).items():
        plan[ident] = _store(folder, layer_onnx(layer, cin, cout), files)
    for ident, widths in whole_widths(spaces).items():
        plan[ident] = _store(folder, whole_onnx(model, protect, widths, config, folder), files)
    plan[BASELINE] = plan["whole:1.0"]
    return files, plan


def _store(folder: Path, payload: bytes, files: dict[str, Path]) -> str:
    name = f"lat-{hashlib.sha256(payload).hexdigest()[:24]}.onnx"
    path = folder / name
    if not path.exists():
        path.write_bytes(payload)
    files[name] = path
    return name


def whole_onnx(model: Any, protect: list[str], widths: dict[str, int], config: Config, folder: Path) -> bytes:
    """The whole model with every group at ``widths`` (weights irrelevant: it is only timed)."""
    import copy

    import torch

    from ..optimize.export.onnx_export import export_onnx
    from ..optimize.prune.structured import build_graph, prune_groups, prune_to

    net = copy.deepcopy(model).eval()
    graph = build_graph(net, torch.zeros(1, *config.input.shape))
    for group in prune_groups(graph, net, protect):
        if group.name in widths:
            prune_to(graph, group, torch.arange(group.width // group.ch_groups, dtype=torch.float32),
                     widths[group.name])
    path = folder / "whole.tmp.onnx"
    export_onnx(net, path, config.input.shape, opset=config.optimize.opset, input_name=config.input.name,
                output=config.model.output)
    payload = path.read_bytes()
    path.unlink()
    return payload


def run_job(config: Config, device_name: str, device: DeviceSection, files: dict[str, Path], plan: dict[str, str],
            graph_id: str, say: Say, on_event: EventSink) -> dict[str, Any]:
    """Sign, upload what the device lacks, publish the latency job and follow it to its report."""
    from ..optimize import Optimized
    from .bundle import build_settings
    from .keys import load_or_create_key, sign
    from .session import connected, follow, ship

    build = dict(build_settings(device), allow_fallback=False)
    manifest = {
        "schema_version": SCHEMA_VERSION, "kind": LATENCY_MODEL, "model": config.project.name,
        "edgekit_version": __version__,
        "input": {"name": config.input.name, "shape": config.input.shape, "dtype": "float32",
                  "batch_sizes": [config.prune.target_batch]},
        "target": {"backend": device.backend, "precision": device.precision, "build": build},
        "files": file_entries(files),
        "latency": {"graph": graph_id, "batch": config.prune.target_batch, "iterations": ITERATIONS,
                    "max_seconds": config.prune.latency_budget_s, "variants": plan},
    }
    parse_manifest(manifest)
    payload = canonical_bytes(manifest)
    key = load_or_create_key(host_home())
    with connected(device_name, device, key) as transport:
        shipped = Optimized(files[next(iter(files))].parent, files, [], {})
        shipment = ship(transport, shipped, manifest, sign(key, payload), payload, say)
        report = follow(transport, shipment.job, on_event)
    if report.get("status") != "done" or not isinstance(report.get("ms"), dict):
        raise CheckFailed(f"measuring the latency model on {device_name} failed: {report.get('error', 'no table')}; "
                          "nothing was optimised or deployed")
    return report
