"""Fleets without devices: inventories (Ansible INI and YAML, ssh config), wave plans, device names in TOML."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgekit.host.config import load_config
from edgekit.host.errors import ConfigError
from edgekit.host.ship.rollout import plan_waves, wave_sizes

from .conftest import TINY_PROJECT, run_cli

INI = """\
# the lab
jet00 ansible_host=10.0.0.9
[lab]
jet[01:03] ansible_user=nv
orin:2222 edgekit_precision=int8

[lab:vars]
edgekit_backend=onnxruntime   # inline comment
ansible_port=2200

[canary]
jet01 edgekit_threads=2

[site:children]
lab
canary

[site:vars]
edgekit_backend=openvino
edgekit_root=~/.edgekit-site
"""

YAML = """\
all:
  vars:
    edgekit_backend: onnxruntime
  children:
    lab:
      vars:
        ansible_user: nv
      hosts:
        jet[1:2]:
          ansible_host: 127.0.0.1
        orin:
          ansible_port: 2222
          edgekit_precision: int8
"""


def project_with(tmp_path: Path, inventory_name: str, text: str, extra: str = "") -> Path:
    (tmp_path / inventory_name).write_text(text)
    config = tmp_path / "deploy.toml"
    config.write_text(TINY_PROJECT + f'\n[fleet]\ninventory = "{inventory_name}"\n{extra}')
    return config


def test_ini_inventory_hosts_groups_children_and_vars(tmp_path):
    config = load_config(project_with(tmp_path, "hosts.ini", INI))
    jet01, orin, jet00 = config.devices["jet01"], config.devices["orin"], config.devices["jet00"]
    assert sorted(config.devices) == ["jet00", "jet01", "jet02", "jet03", "orin"]
    assert (jet01.host, jet01.user, jet01.port, jet01.threads) == ("jet01", "nv", 2200, 2)
    assert set(jet01.groups) == {"lab", "canary", "site"} and orin.groups == ["site", "lab"]
    # a child group's vars win over its parent's; the host's own over both; host:port is the port
    assert jet01.backend == "onnxruntime" and jet01.root == "~/.edgekit-site"
    assert (orin.port, orin.precision) == (2222, "int8")
    assert (jet00.host, jet00.groups, jet00.backend) == ("10.0.0.9", [], "auto")


def test_yaml_inventory_and_deploy_toml_devices_side_by_side(tmp_path):
    path = project_with(tmp_path, "hosts.yml", YAML, '\n[devices.jet1]\nhost = "10.1.1.1"\n')
    config = load_config(path)
    assert sorted(config.devices) == ["jet1", "jet2", "orin"]
    assert config.devices["jet1"].host == "10.1.1.1"  # deploy.toml's own table wins
    jet2, orin = config.devices["jet2"], config.devices["orin"]
    assert (jet2.host, jet2.user, jet2.backend, jet2.groups) == ("127.0.0.1", "nv", "onnxruntime", ["lab"])
    assert (orin.port, orin.precision) == (2222, "int8")


@pytest.mark.parametrize("name, text, line, words", [
    ("hosts.ini", INI.replace("edgekit_threads=2", "edgekit_treads=2"), 12, "edgekit_treads"),
    ("hosts.ini", INI.replace("edgekit_precision=int8", "edgekit_precision=int9"), 5, "edgekit_precision"),
    ("hosts.ini", INI.replace("ansible_port=2200", "ansible_port=99999"), 9, "ansible_port"),
    ("hosts.ini", INI.replace("[canary]", "[canary"), 11, "section header"),
    ("hosts.ini", INI.replace("[site:children]", "[site:kids]"), 14, "unknown section kind"),
    ("hosts.yml", YAML.replace("edgekit_precision: int8", "edgekit_precision: int9"), 13, "edgekit_precision"),
    ("hosts.yml", YAML.replace("      hosts:", "      hostz:"), 8, "unknown key"),
    ("hosts.yml", YAML.replace("ansible_port: 2222", "ansible_port: [2222"), 13, "not valid YAML"),
])
def test_a_bad_inventory_is_one_line_naming_file_and_line(tmp_path, name, text, line, words):
    with pytest.raises(ConfigError) as caught:
        load_config(project_with(tmp_path, name, text))
    message = str(caught.value)
    assert f"{name}:{line}:" in message and words in message and "\n" not in message


def test_devices_cli_lists_inventory_and_ssh_config_devices_and_refuses_a_bad_inventory(tmp_path):
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host jet-a jet-b\n  User nv\nHost jet-*\n  Port 2022\nHost other\n  HostName 10.0.0.2\n")
    path = project_with(tmp_path, "hosts.ini", INI, f'ssh_config = "{ssh_config}"\nssh_groups = {{ssh = ["jet-?"]}}\n')
    env = dict(os.environ, EDGEKIT_HOME=str(tmp_path / "home"))
    listed = run_cli("devices", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert {"jet01", "orin", "jet-a", "jet-b", "local"} <= set(rows) and "other" not in rows
    assert rows["jet-a"]["groups"] == ["ssh"] and rows["jet-a"]["host"] == "jet-a"
    table = run_cli("devices", cwd=tmp_path, env=env)
    assert table.returncode == 0 and "jet03" in table.stdout
    (tmp_path / "hosts.ini").write_text(INI.replace("edgekit_threads=2", "edgekit_threads=-1"))
    bad = run_cli("devices", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "hosts.ini:12:" in bad.stderr and "edgekit_threads" in bad.stderr
    assert path.is_file()


@pytest.mark.parametrize("spec, total, sizes", [
    ("1,10%,100%", 20, [1, 2, 17]), ("1,10%,100%", 3, [1, 1, 1]), ("2", 5, [2, 2, 1]),
    ("1,50%", 10, [1, 5, 4]), ("100%", 4, [4]),
])
def test_wave_sizes_follow_ansible_serial(spec, total, sizes):
    assert wave_sizes(spec, total) == sizes
    assert sum(len(w) for w in plan_waves([f"d{i:02d}" for i in range(total)], spec)) == total


@pytest.mark.parametrize("spec", ["0", "x", "150%", "1,,2", "-1"])
def test_bad_waves_are_refused(spec):
    with pytest.raises(ConfigError, match="--waves"):
        wave_sizes(spec, 10)


def test_a_device_name_with_dots_is_written_as_a_quoted_table(tmp_path):
    from edgekit.host.ship.fleet import append_device

    config = tmp_path / "deploy.toml"
    config.write_text(TINY_PROJECT)
    assert append_device(config, "jet.lab-1", "10.0.0.1", "nv", 2222, "onnxruntime")
    device = load_config(config).devices["jet.lab-1"]
    assert (device.host, device.user, device.port, device.backend) == ("10.0.0.1", "nv", 2222, "onnxruntime")


def test_the_agent_runs_only_a_signed_rollback_to_an_engine_it_has(tmp_path):
    from edgekit.device.agent.spool import Spool
    from edgekit.device.contract.manifest import canonical_bytes
    from edgekit.device.contract.rollback import rollback_manifest
    from edgekit.device.jobs.engines import ENGINE_META
    from edgekit.device.jobs.runner import JobRunner
    from edgekit.host.ship.keys import load_or_create_key, public_line, sign

    spool = Spool(tmp_path / "root").ensure()
    key, stranger = load_or_create_key(tmp_path / "host"), load_or_create_key(tmp_path / "stranger")
    spool.trusted_keys.write_text(public_line(key) + "\n")
    for name in ("old", "new"):
        (spool.engines / name).mkdir()
        (spool.engines / name / ENGINE_META).write_text(json.dumps({"backend": "onnxruntime",
                                                                    "options": {"precision": "fp32"}}))
    spool.switch("tiny", spool.engines / "old")
    spool.switch("tiny", spool.engines / "new")
    runner = JobRunner(spool)

    def request(job: str, signer, to=None, model="tiny") -> dict:
        payload = canonical_bytes(rollback_manifest(model, to, 0.0))
        spool.publish(job, payload, sign(signer, payload))
        spool.claim(job)
        return runner.run(job)

    refused = request("j1", stranger)
    assert refused["status"] == "failed" and "does not trust" in refused["error"]
    assert os.path.basename(spool.current("tiny")) == "new"
    gone = request("j2", key, to="0" * 64)
    assert gone["status"] == "failed" and "no longer on this device" in gone["error"]
    back = request("j3", key)
    assert back["status"] == "done" and back["engine_key"] == "old" and back["backend"] == "onnxruntime"
    assert os.path.basename(spool.current("tiny")) == "old"
    again = request("j4", key)  # what was current became previous: a second rollback undoes the first
    assert again["status"] == "done" and os.path.basename(spool.current("tiny")) == "new"
    nothing = request("j5", key, model="other")
    assert nothing["status"] == "failed" and "no previous engine" in nothing["error"]


def test_connections_are_opened_one_device_ahead_and_only_within_the_wave(monkeypatch):
    """A rollout's ``Pipeline`` connects the next device of the wave while one runs its job; it never connects a
    device outside the list it was given (a later wave), and closes what nobody took."""
    import threading

    from edgekit.host.ship import session

    opened, closed, lock = [], [], threading.Lock()

    class Connection:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    def open_device(name, device, key, again):
        with lock:
            opened.append(name)
        return Connection(name)

    class Config:
        def device(self, name):
            return name

    monkeypatch.setattr(session, "open_device", open_device)
    pipeline = session.Pipeline(Config(), ["a", "b", "c"], key=None)
    try:
        assert pipeline.take("a").result().name == "a"
        pipeline.opened["b"].result()
        assert opened == ["a", "b"]  # b is connected while a runs
        assert pipeline.take("b").result().name == "b"
        pipeline.opened["c"].result()
        assert sorted(opened) == ["a", "b", "c"]
        assert pipeline.take("c").result().name == "c" and len(opened) == 3  # nothing beyond the wave
    finally:
        pipeline.close()
    assert closed == []  # all taken: their pushes close them
    early = session.Pipeline(Config(), ["x", "y"], key=None)
    early.take("x").result()
    early.close()  # the wave ended before y: its connection opened ahead is closed
    assert closed == ["y"] and "z" not in opened
