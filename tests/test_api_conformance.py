"""Every TensorRT / cuda-python name our code uses exists in every targeted version, or is version-gated.

The fixtures in tests/fixtures/api/ are recorded from NVIDIA's real bindings by tools/trt_api_fixtures.py
(TensorRT 10.x/11.x wheels from PyPI, 8.5/8.6 from NVIDIA's pybind11 sources; cuda-python 11.8-13.x).
The names used are found statically (AST) in the backend and the CUDA module:

- ``trt.X`` / ``trt.X.Y`` (module names, enum members, class attributes);
- attributes of the objects TensorRT hands back, by the variable they are kept in (``builder``,
  ``config``, ``network``, ``context``, ...);
- cuda-python runtime calls (``self._check("cudaX", ...)``, ``self.rt.X`` and ``self.rt.X.Y``).

A use is *gated* when it sits under an ``if`` that tests a version capability (``plan.progress_monitor``,
``plan.use_calibration_cache``, ...) or behind ``hasattr``/``getattr`` with a default: a gated name must
exist in at least one targeted version; any other must exist in all of them.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "api"
TRT_SOURCES = [ROOT / "device" / "backends" / "tensorrt" / "backend.py"]
CUDA_SOURCES = [ROOT / "device" / "backends" / "tensorrt" / "cuda.py"]
# the variables TensorRT objects live in → their class in the bindings
TRT_OBJECTS = {"builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
               "config": "IBuilderConfig", "profile": "IOptimizationProfile", "runtime": "Runtime",
               "engine": "ICudaEngine", "context": "IExecutionContext", "error": "ParserError", "layer": "ILayer"}
GATES = ("progress_monitor", "use_calibration_cache", "optimization_level", "dla_core", "implicit_int8",
         "strongly_typed", "explicit_batch_flag")


def load(prefix: str) -> dict[str, dict[str, set[str]]]:
    tables = {}
    for path in sorted(FIXTURES.glob(prefix + "-*.json")):
        data = json.loads(path.read_text())
        tables[path.stem.split("-")[-1]] = {k: set(v) for k, v in data["names"].items()}
    return tables


def _gated(test: ast.AST) -> bool:
    text = ast.unparse(test)
    return any(g in text for g in GATES) or "hasattr(" in text


class Uses(ast.NodeVisitor):
    """(class or "<module>", name, gated, line) for every TensorRT name used."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str, bool, int]] = []
        self.gate = 0

    def visit_If(self, node: ast.If) -> None:
        gated = _gated(node.test)
        self.visit(node.test)
        self.gate += gated
        for child in node.body + node.orelse:
            self.visit(child)
        self.gate -= gated

    def visit_IfExp(self, node: ast.IfExp) -> None:
        gated = _gated(node.test)
        self.gate += gated
        self.generic_visit(node)
        self.gate -= gated

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) == 3:
            self.gate += 1
            self.generic_visit(node)
            self.gate -= 1
            return
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        base = node.value
        if _is_trt(base):
            self.found.append(("<module>", node.attr, bool(self.gate), node.lineno))
        elif isinstance(base, ast.Attribute) and _is_trt(base.value):
            self.found.append((base.attr, node.attr, bool(self.gate), node.lineno))
        else:
            holder = _holder(base)
            if holder in TRT_OBJECTS:
                self.found.append((TRT_OBJECTS[holder], node.attr, bool(self.gate), node.lineno))
        self.generic_visit(node)


def _is_trt(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "trt") or (
        isinstance(node, ast.Attribute) and node.attr == "trt" and isinstance(node.value, ast.Name)
        and node.value.id == "self")


def _holder(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return ""


class Calls(Uses):
    """Which module-level helpers are called, and whether each call is gated."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, list[bool]] = {}

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name):
            self.calls.setdefault(node.func.id, []).append(bool(self.gate))
        super().visit_Call(node)


def gated_helpers(tree: ast.Module) -> set[str]:
    """Module-level functions called only under a gate (``_monitor``, ``_cache_calibrator``): their bodies are gated."""
    calls = Calls()
    calls.visit(tree)
    return {f.name for f in tree.body if isinstance(f, ast.FunctionDef) and calls.calls.get(f.name)
            and all(calls.calls[f.name])}


def trt_uses() -> list[tuple[str, str, bool, str]]:
    uses = []
    for path in TRT_SOURCES:
        tree = ast.parse(path.read_text())
        helpers = gated_helpers(tree)
        visitor = Uses()
        for node in tree.body:
            gated = isinstance(node, ast.FunctionDef) and node.name in helpers
            visitor.gate += gated
            visitor.visit(node)
            visitor.gate -= gated
        uses += [(cls, name, gated, f"{path.name}:{line}") for cls, name, gated, line in visitor.found
                 if not name.startswith("__")]
    return uses


def cuda_uses() -> list[tuple[str, str, str]]:
    """("<module>" or enum, name, where) for the cuda-python runtime names device/cuda.py calls."""
    uses = []
    for path in CUDA_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_check" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                uses.append(("<module>", node.args[0].value, f"{path.name}:{node.lineno}"))
            if isinstance(node, ast.Attribute) and _holder(node.value) == "rt":
                uses.append(("<module>", node.attr, f"{path.name}:{node.lineno}"))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and _holder(node.value.value) == "rt":
                uses.append((node.value.attr, node.attr, f"{path.name}:{node.lineno}"))
    return uses


def missing(tables: dict, cls: str, name: str) -> list[str]:
    return [version for version, names in tables.items() if name not in names.get(cls, set())]


TRT_TABLES = load("tensorrt")
CUDA_TABLES = load("cuda-python")


def test_fixtures_cover_the_targeted_versions():
    assert {"8.5", "8.6", "10.3", "11.0"} <= set(TRT_TABLES), sorted(TRT_TABLES)
    assert any(v.startswith("12.") for v in CUDA_TABLES) and any(v.startswith("13.") for v in CUDA_TABLES)
    assert "set_input_shape" in TRT_TABLES["8.5"]["IExecutionContext"]  # the name-based API since 8.5
    assert "FP16" not in TRT_TABLES["11.0"]["BuilderFlag"]  # removed in 11, as the migration guide says


def test_analysis_sees_the_backend_uses():
    """Guards the scanner itself: known uses must be found, with their gates."""
    uses = {(cls, name): gated for cls, name, gated, _ in trt_uses()}
    assert uses[("IExecutionContext", "execute_async_v3")] is False
    assert uses[("IBuilderConfig", "progress_monitor")] is True
    assert uses[("<module>", "IInt8EntropyCalibrator2")] is True
    assert ("<module>", "cudaGraphInstantiateWithFlags", "cuda.py") in {(c, n, w.split(":")[0])
                                                                         for c, n, w in cuda_uses()}


@pytest.mark.parametrize("use", trt_uses(), ids=lambda u: f"{u[0]}.{u[1]}@{u[3]}")
def test_tensorrt_name_exists_where_it_is_used(use):
    cls, name, gated, where = use
    absent = missing(TRT_TABLES, cls, name)
    if gated:
        assert len(absent) < len(TRT_TABLES), f"{cls}.{name} ({where}) exists in no TensorRT version"
    else:
        assert not absent, f"{cls}.{name} ({where}) is missing in TensorRT {', '.join(absent)} without a version gate"


@pytest.mark.parametrize("use", sorted(set(cuda_uses())), ids=lambda u: f"{u[0]}.{u[1]}@{u[2]}")
def test_cuda_python_name_exists_in_every_release(use):
    cls, name, where = use
    absent = missing(CUDA_TABLES, cls, name)
    assert not absent, f"cuda-python runtime {cls}.{name} ({where}) is missing in {', '.join(absent)}"


def test_test_doubles_only_use_real_names():
    """tests/trt_doubles.py stands in for TensorRT: it may not invent API the real bindings lack."""
    used = {("IExecutionContext", n) for n in ("set_input_shape", "get_tensor_shape", "set_tensor_address",
                                               "execute_async_v3", "profiler")}
    used |= {("ICudaEngine", n) for n in ("num_io_tensors", "create_execution_context", "get_tensor_name",
                                          "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype")}
    used |= {("<module>", "nptype"), ("<module>", "IProfiler"), ("TensorIOMode", "INPUT")}
    for cls, name in used:
        assert not missing({k: v for k, v in TRT_TABLES.items() if k != "8.5"}, cls, name), (cls, name)
