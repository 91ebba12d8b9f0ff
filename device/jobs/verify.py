"""Step 1: trust the bundle. The signature is checked before anything else in it is read, then the
manifest's own checks, the accuracy budget (known before any build) and every file against its hash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import AbstractSet, Any, Dict, Optional, Set, Tuple

from ..agent.spool import Spool
from ..agent.store import touch
from ..contract.budget import accuracy_failures, budget_of
from ..contract.manifest import (
    MANIFEST,
    SIGNATURE,
    Manifest,
    ManifestError,
    is_safe_name,
    load_manifest_bytes,
    sha256_file,
)
from ..contract.protocol import WRITER
from ..contract.signing import load_trusted_keys, verify
from ..errors import JobError


def verify_bundle(folder: Path, trusted_keys: Path) -> Tuple[Manifest, str]:
    """The manifest and who signed it; nothing else in the bundle is trusted before this."""
    payload, signer = verify_signed(folder, trusted_keys)
    return load_manifest_bytes(payload), signer


def verify_signed(folder: Path, trusted_keys: Path) -> Tuple[bytes, str]:
    """The manifest's bytes once a trusted key's signature over them checks, and that key's id."""
    payload = _read(folder / MANIFEST, "manifest.json")
    signature = _read(folder / SIGNATURE, "manifest.sig (the bundle is unsigned)")
    return payload, verify(payload, signature, load_trusted_keys(trusted_keys))


def check_accuracy_budget(manifest: Manifest) -> None:
    """The host's measured accuracy against the budget: a miss fails the job before anything is built."""
    missed = accuracy_failures(budget_of(manifest.raw), manifest.raw.get("host", {}).get("accuracy", {}) or {})
    if missed:
        raise JobError("over budget: {}; nothing was built and the active model was not changed".format(
            "; ".join(missed)), {"budget_failures": missed, "model": manifest.model})


def take_uploads(spool: Spool, manifest: Manifest, folder: Path) -> Set[str]:
    """The job's uploads into the store (spool version 2): each file the store lacks is taken from the
    ``blobs/<sha>.<writer>.part`` of the writer the job names, once its content hashes to the sha256 the signed
    manifest gives; the host then needs no remote command of its own to commit them. The blobs just checked are
    returned, so ``resolve_files`` does not hash them twice. An upload that arrived corrupted is removed (the
    next push sends it again) and fails the job before anything is built."""
    writer = job_writer(folder)
    taken = set()  # type: Set[str]
    for entry in manifest.files.values():
        if writer is None:
            break
        part = spool.part(entry.sha256, writer)
        if spool.has_blob(entry.sha256):  # another writer's upload, or an earlier push's, is in the store
            if part.is_file() and not part.is_symlink():
                part.unlink()
            continue
        if part.is_symlink() or not part.is_file():
            continue  # resolve_files says it is missing
        try:
            spool.commit_blob(entry.sha256, part)
        except ValueError as exc:
            raise JobError("{}: {}; the active model was not changed".format(entry.name, exc)) from None
        taken.add(entry.sha256)
    return taken


def job_writer(folder: Path) -> Optional[str]:
    """The writer a published job names (no file: an older host, which committed its uploads itself)."""
    try:
        name = (folder / WRITER).read_bytes()[:200].decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    if not is_safe_name(name):
        raise JobError("the job names an invalid uploader {!r}; push again".format(name[:40]))
    return name


def resolve_files(spool: Spool, manifest: Manifest, verified: AbstractSet[str] = frozenset()) -> Dict[str, Path]:
    """Each file from the content store, its size and hash checked now (a corrupt blob is dropped); the blobs in
    ``verified`` were hashed a moment ago by ``take_uploads``."""
    paths = {}
    for entry in manifest.files.values():
        path = spool.blob(entry.sha256)
        if path.is_symlink():
            path.unlink()
            raise JobError("{} is a symlink in the device's store, which is refused; it was removed, push "
                           "again".format(entry.name))
        if not path.is_file():
            raise JobError("{} is missing from the device's store; push again".format(entry.name))
        if entry.sha256 not in verified and sha256_file(path) != entry.sha256:
            path.unlink()
            raise JobError("{} is corrupted on the device (hash mismatch); it was removed, push again".format(
                entry.name))
        size = path.stat().st_size
        if size != entry.size:  # the content is right, the manifest is not: keep the good blob
            raise JobError("the manifest says {} has {} bytes but its content (sha256 {}) has {}; the bundle is "
                           "inconsistent, push again".format(entry.name, entry.size, entry.sha256[:12], size))
        touch(path)
        paths[entry.name] = path
    return paths


def try_manifest(folder: Path) -> Any:
    """The job's manifest when it can be read at all (for a failure's report), else None; not verified."""
    try:
        return load_manifest_bytes((folder / MANIFEST).read_bytes())
    except (OSError, ManifestError, json.JSONDecodeError):
        return None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise JobError("the job has no {}".format(what)) from None
