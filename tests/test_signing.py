"""Signed manifests: the agent's verifier against keys the host creates."""

from __future__ import annotations

import stat

import pytest

from edgekit.device.contract.signing import SignatureError, load_trusted_keys, verify
from edgekit.host.ship.keys import load_or_create_key, public_line, sign


def test_host_key_is_created_once_with_mode_0600(tmp_path):
    key = load_or_create_key(tmp_path / "home")
    assert stat.S_IMODE((tmp_path / "home" / "signing_key").stat().st_mode) == 0o600
    assert public_line(load_or_create_key(tmp_path / "home")) == public_line(key)


def test_signed_manifest_verifies_and_any_change_is_refused(tmp_path):
    key = load_or_create_key(tmp_path)
    (tmp_path / "trusted").write_text(public_line(key) + "\n")
    trusted = load_trusted_keys(tmp_path / "trusted")
    payload = b'{"model": "m"}\n'
    signature = sign(key, payload)
    assert verify(payload, signature, trusted)
    with pytest.raises(SignatureError, match="altered after signing"):
        verify(b'{"model": "n"}\n', signature, trusted)
    with pytest.raises(SignatureError, match="not an ed25519 signature"):
        verify(payload, b"", trusted)


def test_a_key_the_device_does_not_trust_is_refused(tmp_path):
    ours, theirs = load_or_create_key(tmp_path / "a"), load_or_create_key(tmp_path / "b")
    (tmp_path / "trusted").write_text(public_line(ours) + "\n")
    with pytest.raises(SignatureError, match="does not trust"):
        verify(b"x", sign(theirs, b"x"), load_trusted_keys(tmp_path / "trusted"))
    assert load_trusted_keys(tmp_path / "missing") == {}


def test_concurrent_first_pushes_agree_on_one_signing_key(tmp_path):
    """Five pushes at once on a fresh machine: each gets the same key, none fails on the other's file."""
    import stat
    from concurrent.futures import ThreadPoolExecutor

    from edgekit.host.ship.keys import load_or_create_key, public_line

    with ThreadPoolExecutor(8) as pool:
        lines = set(pool.map(lambda _: public_line(load_or_create_key(tmp_path / "home")), range(16)))
    assert len(lines) == 1
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["signing_key"]  # no temporary file left
    assert stat.S_IMODE((tmp_path / "home" / "signing_key").stat().st_mode) == 0o600
    assert public_line(load_or_create_key(tmp_path / "home")) in lines
