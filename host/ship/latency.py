"""Measure a device's latency model of the project's model (``[prune] target_latency_ms``), before optimising.

The host writes one small ONNX file per layer variant and a few whole-model variants, sends them as a signed
``latency_model`` job (files by sha256, the plan in the manifest: data, no code), and keeps the table the agent
returns beside the layers it describes, in ``.edgekit/latency/``. The prune stage reads that file (its content is
part of the stage's key). The agent caches tables per device, backend, precision, graph and batch: the second
push of a project measures nothing, and uploads nothing (the files are content-addressed).

The table is measured at the precision the device ships. INT8 variants are timed, not guessed: each variant is
quantised here, in the forms the device's runtime reads (``model_files``: U8S8 or 7-bit CPU files, TensorRT's
Q/DQ), from a cheap calibration of that variant (min/max over a few random inputs for one layer, the probe's
real images for a whole model). Its ranges only set scales, which do not change what INT8 kernels cost, while
INT8's speed-up over FP32 differs by layer shape (a 3×3 conv at 16 channels gains little, a 1×1 at 256 much) and
by CPU (VNNI or not), so no single correction from FP32 timings could stand in for it. With ``precision = "auto"``
the agent races the unpruned model at each precision the push's race would build and measures the table at the
fastest (the push re-checks that guess against the precision the final model's race picked:
``push.latency_outcome``).

On TensorRT (always) and on ONNX Runtime and OpenVINO with ``prune.latency_model = "profile"`` the agent builds a
few whole models and reads the runtime's per-layer profile instead of timing one layer variant at a time (on
TensorRT an engine build each; on a CPU a small layer timed alone carries a per-call overhead and misses the
caches and threads of a whole model: ONNX Runtime's layer table over-predicted MobileNetV2 at batch 1 by
25-56 %, while the profile sees each layer only at uniform widths); ``optimize/prune/layer_profile.py`` maps
the profile onto the layers here.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...device import __version__
from ...device.contract import manifest as kinds_of
from ...device.contract.manifest import MODEL_FP32, SCHEMA_VERSION, canonical_bytes, parse_manifest
from ...device.contract.protocol import LATENCY_MODEL
from ...device.contract.runtimes import profiles_latency
from ..config import Config, DeviceSection, host_home
from ..errors import CheckFailed, ConfigError
from ..optimize.prune.latency import (
    BASELINE,
    CHECK_OVER,
    CHECK_ROUNDS,
    GroupSpace,
    Layer,
    Loop,
    Round,
    Trial,
    closed_loop,
    describe_layers,
    graph_hash,
    grid,
    layer_onnx,
    layer_variants,
    load_model_file,
    resolve_target,
    search_spaces,
    whole_widths,
)
from ..optimize.prune.sensitivity import SENSITIVITY_IMAGES, Curve, measured_costs, unmeasured
from ..optimize.prune.trial import TrialSetup, trial
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
    if device.precision == "int8" and not config.quantize.enabled:
        raise ConfigError(f"{config.path.name}: prune.target_latency_ms/target_speedup on {device_name} at precision "
                          "\"int8\" needs the INT8 files it is measured for, and quantize.enabled is false; set "
                          "quantize.enabled = true, or precision = \"fp32\" on the device")
    if device.precision in ("int8", "auto") and device.int8_mode != "explicit":
        raise ConfigError(f"{config.path.name}: devices.{device_name}.int8_mode = \"{device.int8_mode}\": a latency "
                          "target is measured on the explicit Q/DQ INT8 files only (implicit INT8 is deprecated since "
                          "TensorRT 10.1); set int8_mode = \"explicit\" or use prune.ratio")


def device_multiple(config: Config, device_name: str, device: DeviceSection, say: Say) -> int:
    """The channel multiple the widths searched keep on this device (``prune.align_to_device``), from its status:
    asked before any variant is written, since the variants are the widths searched."""
    if not config.prune.align_to_device:
        return 1
    from .keys import load_or_create_key
    from .session import connected

    with connected(device_name, device, load_or_create_key(host_home())) as transport:
        status = transport.status()
    multiple = status_multiple(device, status, config.quantize.enabled)
    if math.lcm(config.prune.round_to, multiple) != config.prune.round_to:
        say(f"widths in steps of {math.lcm(config.prune.round_to, multiple)} channels: {device_name}'s runtime packs "
            f"{multiple} (prune.align_to_device; round_to = {config.prune.round_to})")
    return multiple


def status_multiple(device: DeviceSection, status: dict[str, Any] | None, int8: bool) -> int:
    """``runtimes.channel_multiple`` for the runtimes this job may run on, at the precisions the device builds
    (``auto``: each one it races; no INT8 without quantize.enabled), on the CPU it reports."""
    from ...device.contract.runtimes import auto_precisions, channel_multiple
    from .bundle import device_backends

    backends = device_backends(device.model_copy(update={"allow_fallback": False}), status)
    precisions = {precision for backend in backends
                  for precision in (auto_precisions(backend) if device.precision == "auto" else (device.precision,))}
    isa = ((status or {}).get("cpu") or {}).get("isa") or []
    return channel_multiple(backends, precisions - (set() if int8 else {"int8"}), isa)


@dataclass(frozen=True)
class Forms:
    """What the device needs of each variant: ``profile`` (whole models under the runtime's profiler) or layers
    alone, and the model-file kinds its runtime may read (``model.onnx`` always: the baseline is float)."""

    profile: bool
    kinds: frozenset[str]


def variant_forms(device: DeviceSection, status: dict[str, Any] | None, int8: bool = True, method: str = "layers"
                  ) -> Forms:
    """From the device's status (its runtimes, CPU, TensorRT version): the kinds ``model_files`` picks for every
    runtime this job may run on at the device's precision (``auto``: each precision it races), as a push does;
    without ``int8`` (quantize.enabled = false) no INT8 form, so ``auto`` races only what the push will ship;
    ``method`` is ``prune.latency_model`` (``profiles_latency`` says what it means on these runtimes)."""
    from ...device.contract.model_files import ModelChoiceError, file_precision, needed_files
    from ..optimize.quantize.fp16 import known_trt_major, needs_typed_files
    from .bundle import device_backends, device_cpus

    backends = device_backends(device.model_copy(update={"allow_fallback": False}), status)
    try:
        kinds = {MODEL_FP32} | {name for cpu in device_cpus(status)
                                for name in needed_files(backends, device.precision, device.int8_mode, cpu)}
    except ModelChoiceError as exc:
        raise ConfigError(f"devices: {exc}") from None
    reported = ((status or {}).get("backends") or {}).get("tensorrt") or {}
    major = known_trt_major({"backend": "tensorrt", "backend_describe": reported}) if reported else None
    for backend in backends:
        for precision, kind in (("fp16", kinds_of.MODEL_FP16), ("int8", kinds_of.MODEL_INT8_QDQ_FP16)):
            if device.precision in (precision, "auto") and needs_typed_files(backend, precision, device.int8_mode,
                                                                                 major):
                kinds.add(kind)
    if not int8:
        kinds = {kind for kind in kinds if file_precision(kind) != "int8"}
    return Forms(profiles_latency(backends, method), frozenset(kinds & set(_WRITERS) | {MODEL_FP32}))


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
    multiple = device_multiple(config, device_name, device, say)
    spaces = search_spaces(groups, spec.round_to, spec.max_layer_ratio, multiple)
    layers = describe_layers(model, graph, groups, example)
    folder = config.state_dir / "latency"
    graph_id = graph_hash(layers, spaces)

    def prepare(status: dict[str, Any] | None) -> tuple[dict[str, Path], dict[str, Any], Forms]:
        forms = variant_forms(device, status, config.quantize.enabled, config.prune.latency_model)
        files, plan = write_variants(model, protect, layers, spaces, config, folder / "files", forms, batch.numpy())
        say(f"latency model of {len(layers)} layers in {len(groups)} prunable groups: {len(plan)} "
            f"{'whole models to profile' if forms.profile else 'variants to time'} on {device_name} at batch "
            f"{config.prune.target_batch} (bounded by prune.latency_budget_s = {config.prune.latency_budget_s:.0f} s; "
            "cached there after the first push)")
        return files, plan, forms

    report, files, plan = run_job(config, device_name, device, prepare, graph_id, say, on_event)
    table = table_of(report, files, plan, layers, spaces)
    # the file is the prune stage's input: only what the table says goes in (not whether it was measured now)
    saved = {"device": device_name, "backend": report.get("backend"), "precision": report.get("precision"),
             "precision_requested": report.get("precision_requested", device.precision),
             "batch": report.get("batch"), "table_key": report.get("table_key"), "graph": graph_id,
             "mode": report.get("mode", "layers"), "baseline_ms": report["ms"].get(BASELINE),
             "layers": [asdict(layer) for layer in layers], "spaces": [asdict(s) for s in spaces.values()],
             "table": table, "profiles": report.get("profiles", {})}
    path = folder / f"{device_name}-{graph_id[:16]}-b{config.prune.target_batch}.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    if earlier.get("table_key") == saved["table_key"] and earlier.get("table") == table:  # the same table:
        saved.update({key: earlier[key] for key in ("checks", "checked", "accuracy_costs") if key in earlier})
    path.write_text(json.dumps(saved, indent=1, sort_keys=True))
    images = torch.from_numpy(normalize(data.train.images[:SENSITIVITY_IMAGES], mean, std))
    scores = cache(lambda: search_scores(model, spec, groups, protect, images, data.train.labels[:SENSITIVITY_IMAGES]))
    costs = lambda: search_costs(model, graph, groups, scores(), spaces, images,  # noqa: E731
                                 data.train.labels[:SENSITIVITY_IMAGES], spec.output, say)
    measure = lambda widths: measure_widths(config, device_name, device, model, protect, widths,  # noqa: E731
                                            batch.numpy(), graph_id, say, on_event)

    pick = push_trial(config, data, model, protect, scores, mean, std, say) if config.prune.trial else None
    check_widths(config, device_name, path, costs, measure, say, pick)
    return path


def search_scores(model: Any, spec: Any, groups: list[Any], protect: list[str], images: Any, labels: Any
                  ) -> dict[str, Any]:
    """The channels ranked as the prune stage's first step ranks them (Taylor from these images; bn_scale
    before its sparsity training): the costs and the trial cut these, which the prune stage then prunes."""
    import torch

    from ..optimize.prune.structured import accumulate_gradients, importance, score_groups

    if spec.method == "taylor":
        accumulate_gradients(model, [(images, torch.as_tensor(labels, dtype=torch.long))], output=spec.output)
    scores = score_groups(importance(spec.method, spec.norm), groups, list(protect), lambda _: None)
    model.zero_grad(set_to_none=True)
    return scores


def search_costs(model: Any, graph: Any, groups: list[Any], scores: dict[str, Any], spaces: dict[str, GroupSpace],
                 images: Any, labels: Any, output: Any, say: Say) -> dict[str, Curve]:
    """The closed loop's accuracy costs (``sensitivity.measured_costs``) at the latency grid's widths."""
    import torch

    widths = {name: grid(space, space.width) for name, space in spaces.items()}
    say(f"accuracy cost of each prunable group at {sum(len(w) - 1 for w in widths.values())} widths, measured on "
        f"{len(images)} training images (channels masked, no training)")
    curves = measured_costs(model, graph, groups, scores, widths, images, torch.as_tensor(labels, dtype=torch.long),
                            output)
    skipped = unmeasured(curves)
    if skipped:
        say(f"left whole by the latency search (their channels could not be masked to measure a cost): "
            f"{', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''}")
    return curves


def trial_setup(config: Config, data: Any, model: Any, protect: list[str], scores: dict[str, Any], mean: list[float],
                std: list[float]) -> TrialSetup:
    """The trial fine-tune on the prune stage's own split (``validation_fraction`` held out, the train section's
    seed) and with its optimiser settings, so the candidate kept is judged as the pruned model will be trained."""
    import torch

    options = {"batch_size": config.train.batch_size, "lr": config.prune.lr, "momentum": config.train.momentum,
               "weight_decay": config.train.weight_decay, "augment": tuple(config.train.augment),
               "seed": config.train.seed}
    fitting, validation = data.train.hold_out(config.prune.validation_fraction, config.train.seed)
    return TrialSetup(model, torch.zeros(1, *config.input.shape), protect, scores, fitting, validation, mean, std,
                      options, config.model.output)


def push_trial(config: Config, data: Any, model: Any, protect: list[str], scores: Callable[[], dict[str, Any]],
               mean: list[float], std: list[float], say: Say) -> Trial:
    """The closed loop's trial for a push (``trial_setup``), set up only when a target has candidates to compare:
    the channel scores it cuts by are computed then, not for every push."""

    def pick(candidates: list[dict[str, int]], names: list[str]) -> int:
        return trial(trial_setup(config, data, model, protect, scores(), mean, std), say)(candidates, names)

    return pick


def check_widths(config: Config, device_name: str, path: Path, costs: Callable[[], dict[str, Curve]],
                 measure: Callable[[dict[str, int]], float], say: Say, pick: Trial | None = None) -> Loop:
    """The closed loop (``prune.latency.closed_loop``) against the device (``measure``: ``measure_widths``). The
    checks and the answer are kept in the latency file: a second push with the same table and target measures
    nothing, and the prune stage prunes to the widths measured."""
    model, saved = load_model_file(path)
    target = resolve_target(config.prune.target_latency_ms, config.prune.target_speedup, saved["baseline_ms"])
    key = f"{target:.6g}"
    if key in saved.get("checked", {}):
        loop = saved["checked"][key]
        say(f"latency check: the widths for {target:.3g} ms were measured on {device_name} before "
            f"({loop['measured_ms']:.3g} ms, {len(loop['rounds'])} round(s)); nothing to measure")
        return Loop(**{**loop, "rounds": [Round(**r) for r in loop["rounds"]]})

    def shown(done: Round) -> None:
        verdict = "re-searching" if done.again else ("met" if done.measured_ms <= target * (1 + CHECK_OVER) else
                                                     "closest measured")
        say(f"latency check {done.index}/{CHECK_ROUNDS}: widths predicted {done.predicted_ms:.3g} ms, measured "
            f"{done.measured_ms:.3g} ms on {device_name} (target {target:.3g} ms); {verdict}")

    curves = costs()
    loop, checks = closed_loop(model, curves, target, measure, shown, trial=pick)
    saved["accuracy_costs"] = curves  # the prune stage's search (its path, the closest within budget) uses them
    saved["checks"] = [asdict(c) for c in checks]
    saved.setdefault("checked", {})[key] = loop.to_json()
    path.write_text(json.dumps(saved, indent=1, sort_keys=True))
    return loop


def measure_widths(config: Config, device_name: str, device: DeviceSection, model: Any, protect: list[str],
                   widths: dict[str, int], images: Any, graph_id: str, say: Say, on_event: EventSink) -> float:
    """The whole model at ``widths`` (a pruned copy, untrained weights: only timed) as the table's whole models
    are timed, by a ``latency_model`` job holding only it and the unpruned model (the agent's auto choice races
    that one; its time is cached there): content-addressed files, a signed plan, no code. Timed on every runtime
    and precision the push's race would build, the fastest counts: the final model's race keeps that one."""
    ident = f"whole:check:{hashlib.sha256(json.dumps(widths, sort_keys=True).encode()).hexdigest()[:16]}"
    folder = config.state_dir / "latency" / "files"

    def prepare(status: dict[str, Any] | None) -> tuple[dict[str, Path], dict[str, Any], Forms]:
        forms = variant_forms(device, status, config.quantize.enabled, config.prune.latency_model)
        return check_files(model, protect, widths, config, folder, forms, images, ident)

    report, _, _ = run_job(config, device_name, device, prepare, graph_id, say, on_event, race=True)
    times = report.get("raced", {}).get(ident, {})
    table = f"{report.get('backend')} {report.get('precision')}"
    fastest = min(times, key=times.get, default=table)
    if fastest != table:
        say(f"latency check: these widths run fastest on {fastest} ({times[fastest]:.3g} ms; the table's {table}: "
            f"{times.get(table, float('nan')):.3g} ms), which the device's race will pick: checked at that")
    return float(report["ms"][ident])


def check_files(model: Any, protect: list[str], widths: dict[str, int], config: Config, folder: Path, forms: Forms,
                images: Any, ident: str) -> tuple[dict[str, Path], dict[str, Any], Forms]:
    """The whole model at ``widths`` and the unpruned one (the agent's auto choice races it; its time is cached
    there), in the forms the device reads: the same files the table's whole models are."""
    files: dict[str, Path] = {}
    folder.mkdir(parents=True, exist_ok=True)
    real = lambda: np.asarray(images, dtype=np.float32)  # noqa: E731
    plan = {ident: variant_files(folder, whole_onnx(model, protect, widths, config, folder), forms, files, real),
            BASELINE: variant_files(folder, whole_onnx(model, protect, {}, config, folder), forms, files, real)}
    return files, plan, forms


def table_of(report: dict[str, Any], files: dict[str, Path], plan: dict[str, Any], layers: list[Layer],
             spaces: dict[str, GroupSpace]) -> dict[str, float]:
    """The latency model's table from the agent's report: what it timed, and in profile mode every layer
    variant read off the whole models' profiles."""
    table = dict(report["ms"])
    if report.get("mode") == "profile":
        whole = plan[f"whole:{1.0}"]
        table.update(profile_table_of([files[whole[MODEL_FP32]]] + [files[name] for kind, name in whole.items()
                                                                    if kind != MODEL_FP32], layers, spaces,
                                      report["profiles"]))
    return table


def profile_table_of(wholes: list[Path], layers: list[Layer], spaces: dict[str, GroupSpace],
                     profiles: dict[str, dict[str, float]]) -> dict[str, float]:
    """The layer variants' table from the runtime's per-layer profiles (TensorRT, ONNX Runtime, OpenVINO), its names
    read against the unpruned whole model's nodes in every form sent (the runtime ran one of them: an INT8
    file's nodes are not the float one's); Myelin ranges are read in the float file's node order."""
    import onnx

    from ..optimize.prune.layer_profile import node_layers, profile_table

    nodes: dict[str, str] = {}
    order: list[str] = []
    for path in wholes:
        mapped, names = node_layers(onnx.load(str(path), load_external_data=False), layers)
        nodes.update(mapped)
        order = order or names
    return profile_table(layers, spaces, profiles, nodes, order)


def write_variants(model: Any, protect: list[str], layers: list[Layer], spaces: dict[str, GroupSpace],
                   config: Config, folder: Path, forms: Forms | None = None, images: Any = None
                   ) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every variant's ONNX file in each form the device reads (named by content) and the plan: variant id →
    {kind: file name}. With a profiling runtime, the whole models at ``PROFILE_LEVELS`` only."""
    from ..optimize.prune.layer_profile import level_widths

    forms = forms or Forms(False, frozenset({MODEL_FP32}))
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    plan: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    if not forms.profile:
        for ident, (layer, cin, cout) in layer_variants(layers, spaces).items():
            shape = (CALIBRATION_INPUTS, cin, *layer.size) if layer.kind == "conv" else (CALIBRATION_INPUTS, cin)
            plan[ident] = variant_files(folder, layer_onnx(layer, cin, cout), forms, files,
                                 lambda shape=shape: rng.standard_normal(shape).astype(np.float32))
    wholes = level_widths(spaces) if forms.profile else whole_widths(spaces)
    real = (lambda: np.asarray(images, dtype=np.float32)) if images is not None else \
        (lambda: rng.standard_normal((CALIBRATION_INPUTS, *config.input.shape)).astype(np.float32))
    for ident, widths in wholes.items():
        plan[ident] = variant_files(folder, whole_onnx(model, protect, widths, config, folder), forms, files, real)
    plan[BASELINE] = plan["whole:1.0"]
    return files, plan


CALIBRATION_INPUTS = 4  # random inputs calibrating one layer variant's INT8 form: its scales do not change its speed


def variant_files(folder: Path, payload: bytes, forms: Forms, files: dict[str, Path], inputs: Callable[[], Any]
           ) -> dict[str, str]:
    """The float variant and its other forms, each written once per content (a second push quantises nothing)."""
    name = _store(folder, payload, files)
    entry = {MODEL_FP32: name}
    for kind in sorted(forms.kinds - {MODEL_FP32}):
        derived = folder / f"{name[:-len('.onnx')]}.{kind}"
        if not derived.exists():
            _WRITERS[kind](folder / name, derived, inputs)
        entry[kind] = _store(folder, derived.read_bytes(), files)
    return entry


def _int8_table(float_file: Path, inputs: Any) -> Any:
    from ...calibration.collect import collect, make_table

    return make_table(collect(float_file, [inputs]), "minmax")


def _write_cpu(reduce_range: bool) -> Callable[[Path, Path, Callable[[], Any]], None]:
    def write(source: Path, output: Path, inputs: Callable[[], Any]) -> None:
        from ...calibration.cpu import write_cpu_int8

        write_cpu_int8(source, _int8_table(source, inputs()), output.with_suffix(".part"), reduce_range=reduce_range)
        output.with_suffix(".part").replace(output)
    return write


def _write_qdq(source: Path, output: Path, inputs: Callable[[], Any]) -> None:
    from ...calibration.trt_qdq import write_trt_qdq

    write_trt_qdq(source, _int8_table(source, inputs()), output.with_suffix(".part"))
    output.with_suffix(".part").replace(output)


def _write_fp16(source: Path, output: Path, inputs: Callable[[], Any]) -> None:
    from ..optimize.quantize.fp16 import write_fp16

    write_fp16(source, output.with_suffix(".part"))
    output.with_suffix(".part").replace(output)


def _write_qdq_fp16(source: Path, output: Path, inputs: Callable[[], Any]) -> None:
    from ..optimize.quantize.fp16 import write_qdq_fp16

    qdq = output.with_name(output.name + ".qdq.onnx")
    if not qdq.exists():
        _write_qdq(source, qdq, inputs)
    write_qdq_fp16(qdq, output.with_suffix(".part"))
    output.with_suffix(".part").replace(output)


_WRITERS: dict[str, Callable[[Path, Path, Callable[[], Any]], None]] = {
    kinds_of.MODEL_INT8_CPU: _write_cpu(False), kinds_of.MODEL_INT8_CPU_AVX2: _write_cpu(True),
    kinds_of.MODEL_INT8_QDQ: _write_qdq, kinds_of.MODEL_FP16: _write_fp16,
    kinds_of.MODEL_INT8_QDQ_FP16: _write_qdq_fp16}


def _store(folder: Path, payload: bytes, files: dict[str, Path]) -> str:
    name = f"lat-{hashlib.sha256(payload).hexdigest()[:24]}.onnx"
    path = folder / name
    if not path.exists():
        path.write_bytes(payload)
    files[name] = path
    return name


def whole_onnx(model: Any, protect: list[str], widths: dict[str, int], config: Config, folder: Path) -> bytes:
    """The whole model with every group at ``widths`` (weights irrelevant: it is only timed), its BatchNorms
    folded as the shipped model's are (in torch, what is left on the graph): a runtime that folds them itself
    names the result after none of its source nodes (OpenVINO: "Multiply_4979"), so a profile could not say
    whose time it was."""
    import copy

    import torch

    from ..optimize.fold.batchnorm import export_folded
    from ..optimize.prune.structured import build_graph, prune_groups, prune_to

    net = copy.deepcopy(model).eval()
    graph = build_graph(net, torch.zeros(1, *config.input.shape))
    for group in prune_groups(graph, net, protect):
        if group.name in widths:
            prune_to(graph, group, torch.arange(group.width // group.ch_groups, dtype=torch.float32),
                     widths[group.name])
    path = export_folded(net, folder / "whole.tmp.onnx", config.input.shape, opset=config.optimize.opset,
                         input_name=config.input.name, output=config.model.output)
    payload = path.read_bytes()
    path.unlink()
    return payload


Prepare = Callable[[dict[str, Any] | None], tuple[dict[str, Path], dict[str, Any], Forms]]


def run_job(config: Config, device_name: str, device: DeviceSection, prepare: Prepare, graph_id: str, say: Say,
            on_event: EventSink, race: bool = False) -> tuple[dict[str, Any], dict[str, Path], dict[str, Any]]:
    """Ask the device what it runs (its status), write the variants it needs (``prepare``), sign, upload what it
    lacks, publish the latency job and follow it to its report. ``race``: whole models are also timed on every
    runtime and precision the push's race would build, and the fastest is reported (``jobs.latency.raced``)."""
    from ..optimize import Optimized
    from .bundle import build_settings
    from .keys import load_or_create_key, sign
    from .session import connected, follow, ship

    build = dict(build_settings(device), allow_fallback=False)
    key = load_or_create_key(host_home())
    with connected(device_name, device, key) as transport:
        files, plan, forms = prepare(transport.status())
        manifest = {
            "schema_version": SCHEMA_VERSION, "kind": LATENCY_MODEL, "model": config.project.name,
            "edgekit_version": __version__,
            "input": {"name": config.input.name, "shape": config.input.shape, "dtype": "float32",
                      "batch_sizes": [config.prune.target_batch]},
            "target": {"backend": device.backend, "precision": device.precision, "build": build},
            "files": file_entries(files),
            "latency": {"graph": graph_id, "batch": config.prune.target_batch, "iterations": ITERATIONS,
                        "max_seconds": config.prune.latency_budget_s, "variants": plan,
                        "mode": "profile" if forms.profile else "layers", "race": race},
        }
        parse_manifest(manifest)
        payload = canonical_bytes(manifest)
        shipped = Optimized(files[next(iter(files))].parent, files, [], {})
        shipment = ship(transport, shipped, manifest, sign(key, payload), payload, say)
        report = follow(transport, shipment.job, on_event)
    if report.get("status") != "done" or not isinstance(report.get("ms"), dict):
        raise CheckFailed(f"measuring the latency model on {device_name} failed: {report.get('error', 'no table')}; "
                          "nothing was optimised or deployed")
    return report, files, plan
