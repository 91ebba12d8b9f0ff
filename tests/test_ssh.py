"""Shipping over SSH to real OpenSSH servers on 127.0.0.1, the agent running as an unprivileged user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import add_device, run_cli, ssh_fingerprint
from .sshd import device_root

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab_project(ssh_device):
    return ssh_device


def test_device_check_reports_agent_backends_and_disk(lab_project):
    project, env, _ = lab_project
    result = run_cli("device", "check", "jet", "--json", cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["reachable"] and info["agent_running"] and info["agent_version"] == info["host_version"]
    assert info["backends"]["onnxruntime"]["available"] and info["backends"]["onnxruntime"]["version"]
    assert info["backends"]["tensorrt"]["available"] is False and info["free_disk_bytes"] > 0
    table = run_cli("device", "check", "jet", cwd=project, env=env)
    assert "running" in table.stdout and "onnxruntime" in table.stdout


def test_push_over_ssh_then_a_repush_sends_no_model_bytes(lab_project):
    project, env, _ = lab_project
    first = run_cli("push", "jet", "--json", cwd=project, env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)["report"]
    assert report["status"] == "done" and report["validation"]["passed"] and report["uploaded_bytes"] > 0
    second = run_cli("push", "jet", "--json", cwd=project, env=env)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)["report"]
    assert again["uploaded_bytes"] == 0 and again["engine_reused"]
    status = run_cli("status", "jet", "--json", cwd=project, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["job"] == again["job"]


def test_unknown_and_changed_host_keys_are_refused(lab_project, ssh_lab):
    project, env, _ = lab_project
    stranger = ssh_lab.server("stranger")
    config = project / "deploy.toml"
    original = config.read_text()
    config.write_text(original + f'\n[devices.stranger]\nhost = "127.0.0.1"\nport = {stranger.port}\n'
                                 f'user = "{ssh_lab.user}"\nroot = "{device_root("stranger")}"\n')
    try:
        unknown = run_cli("push", "stranger", cwd=project, env=env)
        assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
        assert "unknown ssh-ed25519 host key " + ssh_fingerprint(stranger) in unknown.stderr.replace("\n", "")
        wrong = run_cli("device", "add", "stranger", "--host", "127.0.0.1", "--port", str(stranger.port),
                        "--trust", "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", cwd=project, env=env)
        assert wrong.returncode == 1 and "refusing to trust" in wrong.stderr
        right = run_cli("device", "add", "stranger", "--host", "127.0.0.1", "--port", str(stranger.port),
                        "--trust", ssh_fingerprint(stranger), cwd=project, env=env)
        assert right.returncode == 0, right.stderr
        stranger.stop()  # the device is "reinstalled": a new host key on the same address
        stranger.host_key.unlink()
        stranger.host_key.with_suffix(".pub").unlink()
        stranger.start(ssh_lab.home / ".ssh" / "id_ed25519.pub")
        changed = run_cli("push", "stranger", cwd=project, env=env)
        assert changed.returncode == 1 and "HOST KEY CHANGED" in changed.stderr
        assert ssh_fingerprint(stranger) in changed.stderr.replace("\n", "")
    finally:
        config.write_text(original)
        stranger.stop()


def test_tampered_unsigned_and_foreign_bundles_are_rejected_over_ssh(lab_project, monkeypatch, tmp_path):
    from edgekit.host.config import load_config
    from edgekit.host.optimize import optimize
    from edgekit.host.ship.bundle import make_manifest, manifest_bytes
    from edgekit.host.ship.keys import load_or_create_key, sign
    from edgekit.host.ship.session import follow
    from edgekit.host.ship.transports.ssh import SSHTransport

    project, env, _ = lab_project
    for key in ("HOME", "EDGEKIT_HOME", "SSH_AUTH_SOCK"):
        monkeypatch.setenv(key, env[key])
    assert run_cli("push", "jet", cwd=project, env=env).returncode == 0
    config = load_config(project / "deploy.toml")
    optimized = optimize(config, say=lambda m: None)
    manifest = make_manifest(config, config.device("jet"), optimized.files, dict(optimized.host))
    payload = manifest_bytes(manifest)
    key = load_or_create_key(Path(env["EDGEKIT_HOME"]))
    transport = SSHTransport("jet", config.device("jet"))
    try:
        before = transport.status()["models"]["tiny"]
        cases = [(payload.replace(b'"fp32"', b'"int8"', 1), sign(key, payload), "altered after signing"),
                 (payload, b"", "not an ed25519 signature"),
                 (payload, sign(load_or_create_key(tmp_path / "other"), payload), "does not trust")]
        from edgekit.device.contract.protocol import new_job_id

        for body, signature, words in cases:
            job = new_job_id()
            transport.publish(job, body, signature)
            report = follow(transport, job, lambda event: None)
            assert report["status"] == "failed" and words in report["error"]
        assert transport.status()["models"]["tiny"] == before
    finally:
        transport.close()


def test_an_upload_cut_off_half_way_resumes_where_it_stopped(lab_project, monkeypatch, tmp_path):
    from edgekit.device.contract.manifest import sha256_file
    from edgekit.host.config import load_config
    from edgekit.host.errors import CheckFailed
    from edgekit.host.ship.session import lost_connection
    from edgekit.host.ship.transports.ssh import SSHTransport

    project, env, _ = lab_project
    for key in ("HOME", "EDGEKIT_HOME", "SSH_AUTH_SOCK"):
        monkeypatch.setenv(key, env[key])
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 * 1024 * 1024))
    sha = sha256_file(blob)
    device = load_config(project / "deploy.toml").device("jet")
    first = SSHTransport("jet", device)
    sent = []

    def cut_off(size: int) -> None:
        sent.append(size)
        if len(sent) == 4:
            first.client.close()  # the connection drops mid-upload
            raise ConnectionResetError("connection lost")

    with pytest.raises(CheckFailed, match="lost the connection to jet .* the upload resumes where it stopped"):
        with lost_connection("jet", "uploading; push again: the upload resumes where it stopped"):
            first.upload(sha, blob, cut_off)
    first.close()  # the cut-off push ends; the next one takes the same writer slot
    second = SSHTransport("jet", device)
    try:
        partial = second.fs.stat(f"blobs/{sha}.{second.writer}.part").size
        assert 0 < partial < blob.stat().st_size
        resumed = []
        second.upload(sha, blob, resumed.append)
        assert sum(resumed) == blob.stat().st_size - partial
        assert sha not in second.missing([sha])
    finally:
        second.close()


def test_a_fleet_of_three_gets_one_table_and_a_dead_device_does_not_stop_it(lab_project, ssh_lab):
    project, env, _ = lab_project
    config = project / "deploy.toml"
    original = config.read_text()
    try:
        config.write_text(original.replace(f'root = "{device_root("jet")}"', f'root = "{device_root("jet")}"\n'
                                                                            'groups = ["lab"]'))
        for name in ("b", "c"):
            add_device(project, env, ssh_lab, ssh_lab.server(name), name, group="lab")
            assert run_cli("device", "setup", name, cwd=project, env=env).returncode == 0
        fleet = run_cli("push", "--group", "lab", "--json", cwd=project, env=env)
        assert fleet.returncode == 0, fleet.stderr + fleet.stdout[-3000:]
        rows = json.loads(fleet.stdout)["rows"]
        assert sorted({row["device"] for row in rows}) == ["b", "c", "jet"]
        assert all(row["status"] == "done" and row["validation"] == "passed" for row in rows)
        config.write_text(config.read_text() + '\n[devices.down]\nhost = "127.0.0.1"\nport = 9\n'
                                                'groups = ["lab"]\n')
        partial = run_cli("push", "--group", "lab", cwd=project, env=env)
        assert partial.returncode == 1 and "1 of 4 device(s) failed: down" in partial.stderr
        assert partial.stdout.count("passed") >= 6 and "cannot reach" in partial.stdout
    finally:
        config.write_text(original)


def test_proxyjump_from_ssh_config_is_followed(lab_project, ssh_lab):
    project, env, server = lab_project
    jump = ssh_lab.server("jump")
    ssh_config = ssh_lab.home / ".ssh" / "config"
    ssh_config.write_text(f"Host jumpbox\n  HostName 127.0.0.1\n  Port {jump.port}\n  User {ssh_lab.user}\n"
                          f"Host behind\n  HostName 127.0.0.1\n  Port {server.port}\n  User {ssh_lab.user}\n"
                          "  ProxyJump jumpbox\n")
    config = project / "deploy.toml"
    original = config.read_text()
    try:
        trusted = run_cli("device", "add", "jumpbox", "--host", "jumpbox", "--trust", ssh_fingerprint(jump),
                          cwd=project, env=env)
        assert trusted.returncode == 0, trusted.stderr
        config.write_text(config.read_text() + '\n[devices.behind]\nhost = "behind"\n'
                          f'root = "{device_root("jet")}"\nvenv = "{device_root("venv")}"\n')
        through = run_cli("device", "check", "behind", "--json", cwd=project, env=env)
        assert through.returncode == 0, through.stderr
        assert json.loads(through.stdout)["agent_running"]
        jump.stop()  # the jump host is really in the path: without it the device is unreachable
        cut = run_cli("device", "check", "behind", cwd=project, env=env)
        assert cut.returncode == 1 and "cannot reach" in cut.stderr
    finally:
        config.write_text(original)
        ssh_config.unlink()
        jump.stop()


def test_an_upload_runs_no_command_on_the_device_and_an_older_agent_commits_it_in_one(lab_project, monkeypatch,
                                                                                       tmp_path):
    """The round trips a push makes: the device's runtimes and CPU come from the file the agent wrote at its
    start (no `edgekit-agent status` run), an upload to an agent that takes a job's uploads itself (spool
    version 2) runs no command at all and leaves the parts for the job; one that does not is committed by one
    command, and a part whose bytes do not match its hash is still refused by the device, naming the file."""
    from edgekit.device.contract.manifest import sha256_file
    from edgekit.host.config import load_config
    from edgekit.host.errors import CheckFailed
    from edgekit.host.ship.transports.sftp import SFTPFS
    from edgekit.host.ship.transports.ssh import SSHTransport

    project, env, _ = lab_project
    for key in ("HOME", "EDGEKIT_HOME", "SSH_AUTH_SOCK"):
        monkeypatch.setenv(key, env[key])
    blobs = {}
    for index in range(3):
        path = tmp_path / f"blob{index}"
        path.write_bytes(os.urandom(64 * 1024))
        blobs[sha256_file(path)] = path
    commands: list[str] = []
    run = SFTPFS.run
    monkeypatch.setattr(SFTPFS, "run", lambda fs, command, timeout=600.0: commands.append(command) or
                        run(fs, command, timeout))
    transport = SSHTransport("jet", load_config(project / "deploy.toml").device("jet"))
    try:
        info = transport.device_info()
        assert info["backends"]["onnxruntime"]["available"] and info["cpu"] and commands == []
        assert transport.agent_takes_uploads
        transport.make_room(sum(p.stat().st_size for p in blobs.values()), {})  # store.json: room to spare
        transport.upload_all(blobs, lambda size: None)
        assert commands == [] and sorted(transport.missing(sorted(blobs))) == sorted(blobs)
        assert all(transport.fs.stat(f"blobs/{sha}.{transport.writer}.part") for sha in blobs)
        transport.info = dict(info, spool=1)  # an agent older than spool version 2
        transport.upload_all(blobs, lambda size: None)
        assert len(commands) == 1 and "commit-blob" in commands[0] and all(sha in commands[0] for sha in blobs)
        assert transport.missing(sorted(blobs)) == []
        forged = tmp_path / "forged.onnx"
        forged.write_bytes(b"not the bytes of that hash")
        with pytest.raises(CheckFailed, match="upload of forged.onnx to jet failed"):
            transport.upload_all({"0" * 64: forged}, lambda size: None)
        assert "0" * 64 in transport.missing(["0" * 64])
    finally:
        transport.close()
