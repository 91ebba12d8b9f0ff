"""Record the API surface of NVIDIA's real binding wheels into tests/fixtures/api/ (run by hand, kept in the repo).

TensorRT cannot run here, but its binding wheels can be imported: this script downloads each
``tensorrt-bindings`` / ``tensorrt-cu12-bindings`` wheel, links it against generated stand-ins for the C
entry points libnvinfer / libnvonnxparser / libnvinfer_plugin (/ libnvparsers on 8.x) export (the wheels
ship without libraries; importing only registers pybind11 classes, it calls none of them), imports it in
a subprocess (tests/trt_api/dump.py) and writes every class with its bases, members (methods with their
pybind11 signatures, properties and whether they can be set, enum values, nested classes), every enum's
members and every module function's signature.

cuda-python releases that install on this Python are installed into a throwaway --target directory and
introspected (``inspect.signature`` of each runtime function, enum members). cuda-python 11.8.2 (what
JetPack 5's Python 3.8 resolves) has no wheel for newer Pythons: its runtime's ``cudart.pyx`` (shipped in
the wheel) is parsed instead (``def`` signatures, ``IntEnum`` members).

    python tests/trt_api/extract.py [--only tensorrt|cuda]

Needs pip, gcc, readelf, nm and the registry. tests/trt_api/proxy.py builds test-time stand-ins from the
fixtures, so CI needs no wheel.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "api"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# (package, version): JetPack 6.0 / x86 8.6, JetPack 6.1-6.2 (10.3), the newest 10.x, TensorRT 11
TENSORRT = [("tensorrt-bindings", "8.6.1"), ("tensorrt-cu12-bindings", "10.3.0"),
            ("tensorrt-cu12-bindings", "10.16.1.11"), ("tensorrt-cu12-bindings", "11.0.0.114")]
CUDA_PYTHON = ["11.8.7", "12.6.2.post1", "12.9.10", "13.0.3"]
CUDA_PYTHON_SOURCE = ["11.8.2"]  # cp38-only wheels: parsed from the wheel's cudart.pyx
_PREFIX = re.compile(r"\btensorrt(?:_bindings)?\.tensorrt\.")


def run(command: List[str], **kwargs: Any) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError("{}...: {}".format(" ".join(command[:6]), result.stderr.strip()[-800:]))
    return result.stdout


def download(spec: str, into: Path, python: str = "") -> Path:
    version = python or "{}.{}".format(*sys.version_info[:2])
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(into),
               "--python-version", version]
    for tag in PLATFORMS:
        command += ["--platform", tag]
    run(command + [spec])
    return next(into.glob("*.whl"))


def stub_libraries(extension: Path, into: Path) -> None:
    """Libraries named as the bindings need them, exporting each TensorRT symbol they import as a no-op."""
    needed = re.findall(r"\(NEEDED\).*\[(libnv[^\]]+)\]", run(["readelf", "-d", str(extension)]))
    symbols = [line.split()[-1] for line in run(["nm", "-D", "--undefined-only", str(extension)]).splitlines()
               if "@" not in line and not re.match(r"_?Py|_ITM|__gmon|__pthread|_ZGTt", line.split()[-1])]
    source = into / "stub.c"
    source.write_text("".join("void* {}(void) {{ return 0; }}\n".format(name) for name in symbols))
    for library in needed:
        run(["gcc", "-shared", "-fPIC", "-o", str(into / library), "-Wl,-soname," + library, str(source)])


def normalise(value: Any) -> Any:
    """Type names without the module path: 'tensorrt.tensorrt.ILogger.Severity' → 'ILogger.Severity'."""
    if isinstance(value, str):
        return _PREFIX.sub("", value)
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


def record_tensorrt(package: str, version: str) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trt-api-") as tmp:
        folder = Path(tmp)
        wheel = download("{}=={}".format(package, version), folder)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder / "site")
        extension = next((folder / "site" / "tensorrt_bindings").glob("tensorrt*.so"))
        libs = folder / "libs"
        libs.mkdir()
        stub_libraries(extension, libs)
        out = run([sys.executable, str(HERE / "dump.py"), "tensorrt_bindings"], cwd=str(folder / "site"),
                  env={"LD_LIBRARY_PATH": str(libs), "PYTHONPATH": str(folder / "site"), "PATH": "/usr/bin:/bin"})
    data = normalise(json.loads(out))
    data.update(module="tensorrt", package=package, wheel_version=version,
                source="PyPI {}=={} ({}), imported against stub libraries".format(package, version, wheel.name))
    return data


CUDA_DUMP = r"""
import inspect, json, sys
module = __import__(sys.argv[1], fromlist=["_"])
functions, enums, classes = {}, {}, {}
for name in sorted(n for n in dir(module) if not n.startswith("_")):
    obj = getattr(module, name)
    members = getattr(obj, "__members__", None)
    if inspect.isclass(obj) and hasattr(members, "keys") and len(members):
        enums[name] = sorted(members)
    elif inspect.isclass(obj):
        classes[name] = sorted(n for n in dir(obj) if not n.startswith("_"))
    elif callable(obj):
        try:
            params = [{"name": p.name, "default": p.default is not p.empty,
                       "star": {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")}
                      for p in inspect.signature(obj).parameters.values()]
        except (TypeError, ValueError):
            params = None
        functions[name] = {"params": params}
print(json.dumps({"version": getattr(__import__(sys.argv[2], fromlist=["_"]), "__version__", None),
                  "functions": functions, "enums": enums, "classes": classes}))
"""


def record_cuda_python(version: str) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cuda-api-") as tmp:
        run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", tmp,
             "cuda-python=={}".format(version)])
        bindings = (Path(tmp) / "cuda" / "bindings").is_dir()
        module, package = ("cuda.bindings.runtime", "cuda.bindings") if bindings else ("cuda.cudart", "cuda")
        out = run([sys.executable, "-c", CUDA_DUMP, module, package], env={"PYTHONPATH": tmp, "PATH": "/usr/bin:/bin"})
    data = json.loads(out)
    data.update(module=module, package="cuda-python", wheel_version=version,
                source="PyPI cuda-python=={}, installed and introspected".format(version))
    return data


_DEF = re.compile(r"^def (\w+)\(([^)]*)\):", re.M)
_ENUM = re.compile(r"^class (\w+)\(IntEnum\):\n((?:    .*\n|\s*\n)+)", re.M)
_CLASS_BODY = re.compile(r"^cdef class (\w+)[^\n]*:\n((?:    .*\n|\s*\n)+)", re.M)


def record_cuda_python_source(version: str) -> Dict[str, Any]:
    """cuda-python without a wheel for this Python: the runtime module's Cython source from its wheel."""
    with tempfile.TemporaryDirectory(prefix="cuda-src-") as tmp:
        wheel = download("cuda-python=={}".format(version), Path(tmp), python="3.8")
        with zipfile.ZipFile(wheel) as archive:
            text = archive.read("cuda/cudart.pyx").decode("utf-8")
    functions = {}
    for name, params in _DEF.findall(text):
        parsed = []
        for raw in [p.strip() for p in params.replace("\n", " ").split(",") if p.strip()]:
            head, _, default = raw.partition("=")
            head = head.split(":")[0].replace(" not None", "")
            parsed.append({"name": head.split()[-1].lstrip("*"), "default": bool(default),
                           "star": "**" if head.startswith("**") else "*" if head.startswith("*") else ""})
        functions[name] = {"params": parsed}
    enums = {name: sorted(re.findall(r"^    #?\s*(\w+)\s*=", body, re.M)) for name, body in _ENUM.findall(text)}
    enums = {name: [m for m in members if not m.startswith("_")] for name, members in enums.items()}
    classes = {}
    for name, body in _CLASS_BODY.findall(text):
        classes[name] = sorted(set(re.findall(r"^    @property\n    def (\w+)\(self\)", body, re.M)) |
                               set(re.findall(r"^    def ([a-z]\w*)\(self", body, re.M)))
    return {"version": version, "module": "cuda.cudart", "package": "cuda-python", "wheel_version": version,
            "functions": functions, "enums": enums, "classes": classes,
            "source": "PyPI cuda-python=={} ({}): cuda/cudart.pyx parsed (cp38-only wheel)".format(version, wheel.name)}


def write(name: str, data: Dict[str, Any]) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / "{}.json".format(name)).write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print("{}: {}".format(name, data["source"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=inspect.cleandoc(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", choices=("tensorrt", "cuda"), help="record one kind only")
    args = parser.parse_args()
    if args.only in (None, "tensorrt"):
        for package, version in TENSORRT:
            write("tensorrt-" + version, record_tensorrt(package, version))
    if args.only in (None, "cuda"):
        for version in CUDA_PYTHON_SOURCE:
            write("cuda-python-" + version, record_cuda_python_source(version))
        for version in CUDA_PYTHON:
            write("cuda-python-" + version, record_cuda_python(version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
