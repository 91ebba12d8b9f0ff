"""Write the ONNX files TensorRT 11's strongly typed builds need: FP16 types in the graph itself.

TensorRT 11 dropped BuilderFlag.FP16/INT8 and weak typing (NVIDIA's 10.x → 11.x migration guide): a
network runs in the types its ONNX declares. For ``precision = "fp16"`` we ship ``model.fp16.onnx``
(weights and activations FP16, float32 inputs/outputs so the device feeds the same data); for INT8 with
FP16 for the unquantised layers, ``model.int8.qdq.fp16.onnx`` (our Q/DQ model moved to opset 19, where
Q/DQ take FP16 scales, so every DequantizeLinear yields FP16 directly).

The conversion is onnxconverter-common's ``convert_float_to_float16`` (Microsoft's maintained converter,
used by ONNX Runtime's own transformers tooling). It was chosen over NVIDIA ModelOpt's AutoCast because
it is a small pure-Python wheel that installs and works with our onnx/torch here, converts exactly what
we ask (everything, with ``keep_io_types``) and needs no GPU or TensorRT; AutoCast's value — choosing
which nodes to keep in FP32 by measuring accuracy — is what our own validation against reference
outputs already checks on the device.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnx
from onnx import version_converter

from ....device.contract.runtimes import reads_fp16_typed_files

QDQ_FP16_OPSET = 19  # QuantizeLinear/DequantizeLinear accept float16 scales from opset 19


def _convert(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.checker.check_model(converted)
    return converted


def write_fp16(source: Path, output: Path) -> Path:
    """FP16 weights and activations, float32 I/O (Cast at the edges)."""
    onnx.save(_convert(onnx.load(str(source))), str(output))
    return output


def write_qdq_fp16(source: Path, output: Path) -> Path:
    """The Q/DQ INT8 model with FP16 everywhere it is not INT8 (opset 19 for FP16 Q/DQ scales)."""
    model = onnx.load(str(source))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_FP16_OPSET:
        model = version_converter.convert_version(model, QDQ_FP16_OPSET)
    onnx.save(_convert(model), str(output))
    return output


def needs_typed_files(backend: str, precision: str, int8_mode: str, trt_major: int | None) -> bool:
    """Ship FP16-typed files to TensorRT devices that build FP16/INT8, unless we know they run TensorRT < 11.

    8.5–10 build the same precision from the float files with builder flags; only 11 needs types in the
    ONNX. The device's TensorRT major comes from its last report; unknown means ship (a strongly typed
    build without the file cannot be done).
    """
    if not reads_fp16_typed_files(backend) or precision == "fp32" or (precision == "int8" and int8_mode != "explicit"):
        return False
    return trt_major is None or trt_major >= 11


def known_trt_major(last_report: dict | None) -> int | None:
    """The TensorRT major a report names (None when it names none): a done job's backend, a failed job's backend
    (agents since issue 23 add it) or its error message. The runtime's version decides whether typed files are
    needed."""
    if not last_report:
        return None
    if reads_fp16_typed_files(last_report.get("backend")):
        version = str((last_report.get("backend_describe") or {}).get("version") or "")
        if version[:1].isdigit():
            return int(version.split(".")[0])
    # A failed job may carry no report fields, only its message ("TensorRT 11.0.0 builds strongly typed
    # networks and needs model.fp16.onnx ..."): agents before the fix said so only there.
    said = re.search(r"\bTensorRT (\d+)\.\d+", str(last_report.get("error") or ""))
    return int(said.group(1)) if last_report.get("status") == "failed" and said else None


def add_typed_files(files: dict[str, Path], backend: str, precision: str, int8_mode: str, trt_major: int | None,
                    store: Path, say=lambda message: None) -> dict[str, Path]:
    """``files`` plus the FP16-typed ONNX this device needs, written once under ``store`` per source content: for
    every precision the device builds (``auto``, and an explicit one's alternatives it measures to advise) and
    for the unpruned baseline, which TensorRT runs at FP16."""
    from ....device.contract.manifest import (
        MODEL_BASELINE,
        MODEL_BASELINE_FP16,
        MODEL_FP16,
        MODEL_FP32,
        MODEL_INT8_QDQ,
        MODEL_INT8_QDQ_FP16,
    )

    wanted = {"fp16": [(MODEL_FP16, MODEL_FP32, write_fp16), (MODEL_BASELINE_FP16, MODEL_BASELINE, write_fp16)],
              "int8": [(MODEL_INT8_QDQ_FP16, MODEL_INT8_QDQ, write_qdq_fp16)]}
    added = dict(files)
    for each, pairs in wanted.items():
        if not needs_typed_files(backend, each, int8_mode, trt_major):
            continue
        for name, source_name, writer in pairs:
            if source_name in files:
                added[name] = _typed(files[source_name], name, writer, store, say)
    return added


def _typed(source: Path, name: str, writer, store: Path, say) -> Path:
    from ....device.contract.manifest import sha256_file

    target = store / sha256_file(source)[:32] / name  # keyed by the source's content: never stale
    stamp = target.with_name(target.name + ".sha256")  # what was written: a damaged file is written again
    if target.is_file() and (not stamp.is_file() or stamp.read_text().strip() != sha256_file(target)):
        say(f"{target} was damaged (its sha256 differs from the one written); writing it again")
        target.unlink()
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".{}.part".format(os.getpid()))
        writer(source, partial)
        stamp.write_text(sha256_file(partial))
        partial.replace(target)
        say(f"wrote {name} (FP16 types for TensorRT 11's strongly typed build)")
    return target


def typed_files_for(config, device_name: str, device, files: dict[str, Path], say=lambda message: None
                    ) -> dict[str, Path]:
    """What ``push`` adds for this device: the typed ONNX it needs, judged by its last TensorRT reports."""
    if not reads_fp16_typed_files(device.backend):
        return {}
    from ...records.history import History

    history = History(config.state_dir / "history.db")
    major = None
    for offset in range(20):  # the newest report that says which TensorRT the device runs
        report = history.latest(device_name, offset)
        if report is None:
            break
        major = known_trt_major(report)
        if major is not None:
            break
    store = config.state_dir / "typed-onnx"
    added = add_typed_files(files, device.backend, device.precision, device.int8_mode, major, store, say)
    new = {name: path for name, path in added.items() if name not in files}
    return dict(new, **typed_reference(added, store, say))


def typed_reference(files: dict[str, Path], store: Path, say=lambda message: None) -> dict[str, Path]:
    """``{reference.npz: the bundle's reference plus the host's outputs of every FP16-typed file}``, or ``{}``
    when there is nothing to add.

    TensorRT 11 builds the typed file, not the float/Q-DQ file the other versions build, and the device
    validates its engine against the host's outputs *of the file it built* (``built_from``,
    ``edgekit.device.jobs.measure.validate``). Without them it fell back to the FP32 model's outputs: an INT8
    engine was then judged against another file than the one it came from. Written once per content, like
    the typed files (a fleet's devices share it).
    """
    from ....device.contract.manifest import MODEL_FP16, MODEL_INT8_QDQ_FP16, REFERENCE, sha256_file
    from ....device.contract.validate import reference_key

    # The baseline's typed file is benchmarked, never validated: no outputs for it.
    typed = {name: files[name] for name in (MODEL_FP16, MODEL_INT8_QDQ_FP16) if name in files}
    if REFERENCE not in files or not typed:
        return {}
    import numpy as np

    with np.load(str(files[REFERENCE]), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    missing = {name: path for name, path in typed.items() if reference_key(name) not in arrays}
    if not missing:
        return {}
    digest = "-".join(sha256_file(path)[:16] for path in (files[REFERENCE], *missing.values()))
    target = store / "reference" / digest / REFERENCE
    if not target.is_file():
        from ..prevalidate import reference_outputs

        arrays.update({reference_key(name): values for name, values in
                       reference_outputs(missing, arrays["inputs"]).items()})
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name("{}.{}.part.npz".format(target.stem, os.getpid()))
        np.savez(partial, **arrays)
        partial.replace(target)
        say("added the host's outputs of {} to {}".format(", ".join(sorted(missing)), REFERENCE))
    return {REFERENCE: target}
