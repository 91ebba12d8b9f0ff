"""Record the API names NVIDIA's real TensorRT and cuda-python bindings expose, into tests/fixtures/api/.

TensorRT cannot run here, but its Python bindings can be read. For each TensorRT minor release the
registry has (10.x, 11.x: latest patch of each minor), this script pip-downloads the
``tensorrt-cu12-bindings`` wheel, links it against generated stand-ins for the handful of C entry points
libnvinfer/libnvonnxparser export (the wheel ships without libraries; importing only registers pybind11
classes, it calls none of them), imports it in a subprocess and writes every class's methods and
properties and every enum's members. cuda-python's runtime module (11.8, 12.x, 13.x) is installed into
a throwaway --target directory and recorded the same way (it imports without a GPU). TensorRT 8.5/8.6
have no such wheel: with ``--trt-source`` pointing at a git clone of NVIDIA/TensorRT, their names are
read from the pybind11 sources of the release tags (python/src/**.cpp: ``py::class_``/``py::enum_``,
``.def``/``.def_property``/``.value``) and the package's ``__init__.py`` (``nptype``, ``volume``).

    python tools/trt_api_fixtures.py [--only tensorrt|cuda|source] [--trt-source /path/to/TensorRT.git]

Needs pip, a C compiler (gcc) and the registry; tests/test_api_conformance.py reads the fixtures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "api"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
CUDA_PYTHON = ["11.8.7", "12.2.1", "12.6.2.post1", "12.9.10", "13.0.3", "13.4.4"]
TRT_TAGS = {"8.5": "8.5.3", "8.6": "v8.6.1"}

DUMP = r"""
import enum, inspect, json, sys
module = __import__(sys.argv[1], fromlist=["_"])
names = {"<module>": sorted(n for n in dir(module) if not n.startswith("_"))}
for name in names["<module>"]:
    obj = getattr(module, name)
    if inspect.isclass(obj):
        members = set(n for n in dir(obj) if not n.startswith("_"))
        members |= set(getattr(obj, "__members__", {}) or {})
        names[name] = sorted(members)
print(json.dumps({"version": getattr(module, "__version__", None), "names": names}))
"""


def run(command: list[str], **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])}...: {result.stderr.strip()[-500:]}")
    return result.stdout


def registry_versions(package: str) -> list[str]:
    out = run([sys.executable, "-m", "pip", "index", "versions", package])
    line = next(x for x in out.splitlines() if x.startswith("Available versions:"))
    return [v.strip() for v in line.split(":", 1)[1].split(",")]


def latest_per_minor(versions: list[str], majors: tuple[int, ...]) -> list[str]:
    """The newest patch of every major.minor (versions come newest first from pip)."""
    chosen: dict[tuple[int, int], str] = {}
    for version in versions:
        parts = re.match(r"(\d+)\.(\d+)", version)
        key = (int(parts.group(1)), int(parts.group(2)))
        if key[0] in majors and key not in chosen:
            chosen[key] = version
    return [chosen[k] for k in sorted(chosen)]


def download(package: str, version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(into),
               "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}"]
    for tag in PLATFORMS:
        command += ["--platform", tag]
    run(command + [f"{package}=={version}"])
    return next(into.glob("*.whl"))


def stub_libraries(extension: Path, into: Path) -> None:
    """Libraries named as the bindings need them, exporting each TensorRT C symbol they import (as no-ops)."""
    needed = [line.split("[")[1].rstrip("]") for line in run(["readelf", "-d", str(extension)]).splitlines()
              if "(NEEDED)" in line and "libnv" in line]
    symbols = [line.split()[-1] for line in run(["nm", "-D", "--undefined-only", str(extension)]).splitlines()
               if line.split()[0] == "U" and not line.split()[-1].startswith(("Py", "_Py", "_Z")) and "@" not in line]
    source = into / "stub.c"
    source.write_text("".join(f"void* {name}(void) {{ return 0; }}\n" for name in symbols))
    for library in needed:
        run(["gcc", "-shared", "-fPIC", "-o", str(into / library), f"-Wl,-soname,{library}", str(source)])


def record_tensorrt(version: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="trt-api-") as tmp:
        folder = Path(tmp)
        wheel = download("tensorrt-cu12-bindings", version, folder)
        run(["python3", "-m", "zipfile", "-e", str(wheel), str(folder / "site")])
        extension = next((folder / "site" / "tensorrt_bindings").glob("tensorrt*.so"))
        libs = folder / "libs"
        libs.mkdir()
        stub_libraries(extension, libs)
        out = run([sys.executable, "-c", DUMP, "tensorrt_bindings"], cwd=str(folder / "site"),
                  env={"LD_LIBRARY_PATH": str(libs), "PYTHONPATH": str(folder / "site"), "PATH": "/usr/bin:/bin"})
    data = json.loads(out)
    return {"module": "tensorrt", "version": version, "source": f"PyPI tensorrt-cu12-bindings=={version}",
            "names": data["names"]}


def record_cuda_python(version: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="cuda-api-") as tmp:
        run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", tmp, f"cuda-python=={version}"])
        module = "cuda.bindings.runtime" if (Path(tmp) / "cuda" / "bindings").is_dir() else "cuda.cudart"
        out = run([sys.executable, "-c", DUMP, module], env={"PYTHONPATH": tmp, "PATH": "/usr/bin:/bin"})
    return {"module": module, "version": version, "source": f"PyPI cuda-python=={version}",
            "names": json.loads(out)["names"]}


CLASS = re.compile(r"py::(class_|enum_)<([^;{(]*?)>\s*(\w+)?\s*[({]\s*(\w+)\s*,\s*\"(\w+)\"")
MEMBER = re.compile(r"\.(def|def_property|def_property_readonly|def_readwrite|def_readonly|value)\s*\(\s*\"(\w+)\"")


def names_from_pybind(sources: list[str]) -> dict[str, list[str]]:
    """class/enum name → member names, from pybind11 binding sources.

    Members follow their ``class_``/``enum_``; an enum bound inside a class (``Logger.Severity``) also
    exports its values into that class; a class gets its bases' members (``Logger`` ← ``ILogger``).
    """
    names: dict[str, set[str]] = {"<module>": set()}
    python_name: dict[str, str] = {}  # C++ type or binding variable -> Python name
    bases: dict[str, list[str]] = {}
    for text in sources:
        current, parent = None, None
        for match in re.finditer(f"{CLASS.pattern}|{MEMBER.pattern}", text):
            if match.group(5):
                kind, template, variable, scope, current = match.group(1, 2, 3, 4, 5)
                cpp = [t.strip() for t in template.split(",")]
                python_name[cpp[0]] = current
                if variable:
                    python_name[variable] = current
                bases[current] = cpp[1:]
                parent = python_name.get(scope) if scope != "m" and kind == "enum_" else None
                (names["<module>"] if scope == "m" else names.setdefault(parent or scope, set())).add(current)
                names.setdefault(current, set())
            elif current is not None:
                names[current].add(match.group(7))
                if parent and match.group(6) == "value":
                    names[parent].add(match.group(7))
    for cls, cpp_bases in bases.items():
        for base in cpp_bases:
            if python_name.get(base) in names:
                names[cls] |= names[python_name[base]]
    return {k: sorted(v) for k, v in names.items()}


def record_tensorrt_source(git_dir: Path, minor: str, tag: str) -> dict:
    files = [f for f in run(["git", "-C", str(git_dir), "ls-tree", "-r", "--name-only", tag, "python/src"]).split()
             if f.endswith(".cpp")]
    sources = [run(["git", "-C", str(git_dir), "show", f"{tag}:{f}"]) for f in files]
    names = names_from_pybind(sources)
    package = "".join(run(["git", "-C", str(git_dir), "show", f"{tag}:{f}"]) for f in run(
        ["git", "-C", str(git_dir), "ls-tree", "-r", "--name-only", tag, "python/packaging"]).split()
        if f.endswith("tensorrt/__init__.py"))
    names["<module>"] = sorted(set(names["<module>"]) | set(re.findall(r"^def ([a-z]\w*)", package, re.M)))
    return {"module": "tensorrt", "version": minor, "names": names,
            "source": f"NVIDIA/TensorRT {tag}: python/src pybind11 definitions (no wheel on PyPI)"}


def write(name: str, data: dict) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / f"{name}.json").write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"{name}: {sum(len(v) for v in data['names'].values())} names ({data['source']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("tensorrt", "cuda", "source"), help="record one kind only")
    parser.add_argument("--trt-source", type=Path, help="git clone of NVIDIA/TensorRT for the 8.5/8.6 names")
    args = parser.parse_args()
    missing = [tool for tool in ("gcc", "readelf", "nm") if shutil.which(tool) is None]
    if missing and args.only in (None, "tensorrt"):
        parser.error(f"{', '.join(missing)} not found: the TensorRT wheels need them (apt-get install gcc binutils)")
    if args.only in (None, "tensorrt"):
        for version in latest_per_minor(registry_versions("tensorrt-cu12-bindings"), (10, 11)):
            write("tensorrt-" + ".".join(version.split(".")[:2]), record_tensorrt(version))
    if args.trt_source and args.only in (None, "tensorrt", "source"):
        for minor, tag in TRT_TAGS.items():
            write(f"tensorrt-{minor}", record_tensorrt_source(args.trt_source, minor, tag))
    if args.only in (None, "cuda"):
        for version in CUDA_PYTHON:
            write("cuda-python-" + ".".join(version.split(".")[:2]), record_cuda_python(version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
