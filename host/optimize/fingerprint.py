"""Content fingerprints for cache keys: edgekit's own code, and input files or folders by content.

Only edgekit's package files count as code: hashing everything under the checkout root picked up an
editable install's ``.venv`` (torch's sources, ~10 000 files, ~2 s a push), and installing any package
invalidated every cached model.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from ...device.contract.manifest import sha256_file

# (path, size, mtime_ns) -> sha256: a file hashed once per process is not read again
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


@functools.lru_cache(maxsize=1)
def code_files() -> tuple[Path, ...]:
    """Every ``.py`` of edgekit's three packages (host, device, calibration), wherever they are installed."""
    from ... import calibration, device, host

    files: list[Path] = []
    for package in (host, device, calibration):
        root = Path(package.__file__).resolve().parent
        files += sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return tuple(files)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of edgekit's own source: a code change invalidates cached artefacts even without a release."""
    from ...device import __version__

    digest = hashlib.sha256(__version__.encode())
    for path in code_files():
        digest.update(f"{path.parent.name}/{path.name}".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def content_hash(path: Path) -> str:
    """A file's sha256, or a folder's: every file below it by relative name and content; missing is 'missing'."""
    if path.is_file():
        return file_hash(path)
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file_hash(file).encode())
    return digest.hexdigest()
