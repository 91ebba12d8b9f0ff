"""The host's ed25519 signing key: created on first use, mode 0600, under the user's edgekit directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ...device.contract.signing import format_public_key, format_signature
from ..errors import ConfigError

KEY_FILE = "signing_key"


def load_or_create_key(home: Path) -> Ed25519PrivateKey:
    """The host's signing key, created on first use. Concurrent first pushes must agree on one key: it is
    written whole to a private temporary file and linked into place (atomic, fails if another won), so a
    reader never sees a partial key and the loser reads the winner's."""
    path = home / KEY_FILE
    if path.exists():
        return _load_key(path)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, name = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=home)  # mode 0600
    temporary = Path(name)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)
    except FileExistsError:
        return _load_key(path)  # another push created it first: use that one
    finally:
        temporary.unlink(missing_ok=True)
    return key


def _load_key(path: Path) -> Ed25519PrivateKey:
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: signing key is readable by others; run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a readable PEM private key ({str(exc).splitlines()[0][:80]}); restore it from "
                          "a backup, or move it away (a new key is made) and run `edgekit device setup` for each "
                          "device so they trust the new one") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the signing key ({exc.strerror or exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an ed25519 private key; move it away and a new one is created")
    return key


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_line(key: Ed25519PrivateKey, comment: str = "edgekit-host") -> str:
    """The line a device's trusted_keys file holds for this host."""
    return format_public_key(public_bytes(key), comment)


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    return format_signature(public_bytes(key), key.sign(payload))
