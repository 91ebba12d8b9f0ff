"""Manifest signatures: ed25519 over the manifest's exact bytes.

The signature file is one text line ``ed25519 <key-id> <base64 signature>``; the trusted-keys file has
one ``ed25519 <base64 public key> [comment]`` per line. The key id (first 16 hex digits of the public
key's sha256) lets the agent say which key signed, so "unknown signer" is a clear message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Dict, Tuple


class SignatureError(ValueError):
    """The bundle is unsigned, tampered with, or signed by a key the device does not trust."""


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def format_public_key(public_key: bytes, comment: str = "") -> str:
    line = "ed25519 " + base64.b64encode(public_key).decode("ascii")
    return (line + " " + comment).rstrip()


def format_signature(public_key: bytes, signature: bytes) -> bytes:
    return "ed25519 {} {}\n".format(key_id(public_key), base64.b64encode(signature).decode("ascii")).encode("ascii")


def parse_signature(payload: bytes) -> Tuple[str, bytes]:
    try:
        kind, kid, sig = payload.decode("ascii").split()
        if kind != "ed25519":
            raise ValueError(kind)
        return kid, base64.b64decode(sig, validate=True)
    except (UnicodeDecodeError, ValueError, binascii.Error):
        raise SignatureError("manifest.sig is not an ed25519 signature line; "
                             "the bundle was not signed by edgekit") from None


def load_trusted_keys(path: Path) -> Dict[str, bytes]:
    """key id → raw public key; a missing file trusts nobody."""
    keys = {}  # type: Dict[str, bytes]
    if not path.is_file():
        return keys
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except (IndexError, binascii.Error):
            raw = b""
        if parts[0] != "ed25519" or len(raw) != 32:
            raise SignatureError("{}:{}: not an 'ed25519 <base64 key>' line".format(path, number))
        keys[key_id(raw)] = raw
    return keys


def verify(message: bytes, signature_file: bytes, trusted: Dict[str, bytes]) -> str:
    """Return the signer's key id, or raise SignatureError saying why the bundle is refused."""
    kid, signature = parse_signature(signature_file)
    if kid not in trusted:
        raise SignatureError("bundle signed by key {} which this device does not trust; run "
                             "`edgekit device setup` to install the host's key".format(kid))
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:  # pragma: no cover - the device package depends on cryptography
        raise SignatureError("the agent cannot check signatures: install the 'cryptography' package") from None
    try:
        Ed25519PublicKey.from_public_bytes(trusted[kid]).verify(signature, message)
    except InvalidSignature:
        raise SignatureError("manifest signature does not match its content: "
                             "the bundle was altered after signing") from None
    return kid
