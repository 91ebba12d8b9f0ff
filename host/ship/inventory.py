"""Devices kept outside deploy.toml, in the files fleets already have: Ansible inventories (INI and YAML) and
``~/.ssh/config`` host entries.

Pure parsing into plain data: every value keeps the ``file:line`` it came from, so the config loader can
validate it as a ``[devices.*]`` table and point a mistake at its line. Ansible's own variables give the
connection (``ansible_host``/``ansible_user``/``ansible_port``, ``ansible_connection=local``); edgekit's device
keys are ``edgekit_<key>`` (``edgekit_backend = "onnxruntime"``), as host or group variables. Precedence is
Ansible's: ``all`` < parent groups < child groups < the host's own.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError

CONNECTION = {"ansible_host": "host", "ansible_ssh_host": "host", "ansible_user": "user",
              "ansible_ssh_user": "user", "ansible_port": "port", "ansible_ssh_port": "port"}
PREFIX = "edgekit_"
IMPLICIT = ("all", "ungrouped")  # every host is in them; not listed as a device's groups
_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::([0-9]+))?\]")


def ssh_config_path() -> Path:
    """The OpenSSH client config both the fleet's host groups and the transports read (EDGEKIT_SSH_CONFIG wins)."""
    return Path(os.environ.get("EDGEKIT_SSH_CONFIG", "~/.ssh/config")).expanduser()


@dataclass
class Where:
    """A value and the ``file:line`` that set it."""

    value: Any
    at: str


@dataclass
class Group:
    name: str
    at: str
    hosts: dict[str, dict[str, Where]] = field(default_factory=dict)  # host → its own vars (this group's line)
    vars: dict[str, Where] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass
class InventoryDevice:
    """One inventory host as a device: deploy.toml-style keys (each with where it was set) and its groups."""

    name: str
    at: str
    values: dict[str, Where]
    groups: list[str]


# -- Ansible INI ------------------------------------------------------------------------------------
def parse_ini(text: str, source: str) -> dict[str, Group]:
    groups: dict[str, Group] = {"all": Group("all", f"{source}:1"), "ungrouped": Group("ungrouped", f"{source}:1")}
    name, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        at, line = f"{source}:{number}", raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(f"{at}: not a section header: {line!r}; write [group], [group:vars] or "
                                  "[group:children]")
            name, _, kind = line[1:-1].partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise ConfigError(f"{at}: [{line[1:-1]}]: unknown section kind {kind!r}; use :vars or :children")
            _group_name(name, at)
            groups.setdefault(name, Group(name, at))
            continue
        group = groups[name]
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{at}: [{name}:vars] lines are key=value, got {line!r}")
            value = re.sub(r"\s+[#;].*$", "", value.strip())  # an inline comment after whitespace
            group.vars[key.strip()] = Where(_ini_value(value), at)
        elif kind == "children":
            _group_name(line, at)
            groups.setdefault(line, Group(line, at))
            group.children.append(line)
        else:
            _ini_hosts(group, line, at)
    _link(groups)
    return groups


def _ini_hosts(group: Group, line: str, at: str) -> None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise ConfigError(f"{at}: cannot read the host line ({exc}); check its quotes") from None
    if not words:
        return
    pattern, own = words[0], {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigError(f"{at}: host variables are key=value, got {word!r}")
        own[key] = Where(_ini_value(value), at)
    port = None
    if re.fullmatch(r"[^\[\]:]+:[0-9]+", pattern):  # Ansible's `host:port` shorthand
        pattern, port = pattern.rsplit(":", 1)
    for host in expand_range(pattern, at):
        values = dict(own)
        if port is not None:
            values.setdefault("ansible_port", Where(int(port), at))
        group.hosts.setdefault(host, {}).update(values)


def _ini_value(value: str) -> Any:
    """Ansible reads INI values as Python literals where they are one (numbers, booleans), else as strings."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    if re.fullmatch(r"-?[0-9]*\.[0-9]+", value):
        return float(value)
    return value


def expand_range(pattern: str, at: str) -> list[str]:
    """Ansible's host ranges: ``jet[01:12]``, ``node[a:f]``, ``x[0:10:2]`` (bounds included, zero padding kept)."""
    found = _RANGE.search(pattern)
    if found is None:
        return [pattern]
    first, last, step = found.group(1), found.group(2), int(found.group(3) or 1)
    head, tail = pattern[:found.start()], pattern[found.end():]
    if first.isdigit() and last.isdigit():
        width = len(first) if first.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(first), int(last) + 1, step)]
    elif len(first) == len(last) == 1 and first in string.ascii_letters and last in string.ascii_letters:
        items = [chr(c) for c in range(ord(first), ord(last) + 1, step)]
    else:
        raise ConfigError(f"{at}: host range [{found.group(0)[1:-1]}]: use numbers ([01:20]) or single letters ([a:f])")
    if not items:
        raise ConfigError(f"{at}: host range {found.group(0)} is empty (its start is after its end)")
    return [name for item in items for name in expand_range(head + item + tail, at)]


# -- Ansible YAML -----------------------------------------------------------------------------------
def parse_yaml(text: str, source: str) -> dict[str, Group]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - a host dependency
        raise ConfigError(f"{source}: reading a YAML inventory needs PyYAML: pip install pyyaml") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a YAML inventory is a mapping of groups (all: {{hosts: ..., children: ...}})")
    lines = _node_lines(node, ())
    groups: dict[str, Group] = {"all": Group("all", f"{source}:1"), "ungrouped": Group("ungrouped", f"{source}:1")}
    for name, body in data.items():
        _yaml_group(groups, str(name), body, (name,), lines, source)
    _link(groups)
    return groups


def _node_lines(node: Any, path: tuple) -> dict[tuple, int]:
    """The line of every mapping key, by its path of keys: how a YAML value is pointed at."""
    import yaml

    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = path + (key.value,)
            lines[here] = key.start_mark.line + 1
            lines.update(_node_lines(value, here))
    return lines


def _yaml_group(groups: dict[str, Group], name: str, body: Any, path: tuple, lines: dict[tuple, int],
                source: str) -> None:
    at = f"{source}:{lines.get(path, 1)}"
    _group_name(name, at)
    group = groups.setdefault(name, Group(name, at))
    if body is None:
        return
    if not isinstance(body, dict):
        raise ConfigError(f"{at}: group {name!r} must be a mapping with hosts, vars or children")
    for key in body:
        if key not in ("hosts", "vars", "children"):
            raise ConfigError(f"{source}:{lines.get(path + (key,), 1)}: group {name!r}: unknown key {key!r}; a group "
                              "has hosts, vars and children")

    def mapping(key: str) -> dict:
        value = body.get(key) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}:{lines.get(path + (key,), 1)}: {name}.{key} must be a mapping")
        return value

    for key, value in mapping("vars").items():
        group.vars[str(key)] = Where(value, f"{source}:{lines.get(path + ('vars', key), 1)}")
    for host, own in mapping("hosts").items():
        where = path + ("hosts", host)
        if own is not None and not isinstance(own, dict):
            raise ConfigError(f"{source}:{lines.get(where, 1)}: host {host!r}: its variables must be a mapping")
        values = {str(k): Where(v, f"{source}:{lines.get(where + (k,), 1)}") for k, v in (own or {}).items()}
        for expanded in expand_range(str(host), f"{source}:{lines.get(where, 1)}"):
            group.hosts.setdefault(expanded, {}).update(values)
    for child, child_body in mapping("children").items():
        group.children.append(str(child))
        _yaml_group(groups, str(child), child_body, path + ("children", child), lines, source)


# -- both formats -----------------------------------------------------------------------------------
def _group_name(name: str, at: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{at}: group name {name!r}: use letters, digits, '_', '.' or '-'")


def _link(groups: dict[str, Group]) -> None:
    """Top-level groups become children of ``all``; a cycle of children is refused."""
    children = {c for g in groups.values() for c in g.children}
    for name in groups:
        if name != "all" and name not in children and name not in groups["all"].children:
            groups["all"].children.append(name)
    for name in groups:
        _depth(groups, name, ())


def _depth(groups: dict[str, Group], name: str, seen: tuple) -> None:
    if name in seen:
        raise ConfigError(f"{groups[name].at}: group {name!r} is its own descendant ({' > '.join(seen + (name,))})")
    for child in groups[name].children:
        _depth(groups, child, seen + (name,))


def ancestry(groups: dict[str, Group]) -> dict[str, tuple[int, list[str]]]:
    """Each group's depth below ``all`` and its ancestors (itself included)."""
    result: dict[str, tuple[int, list[str]]] = {}

    def walk(name: str, depth: int, chain: list[str]) -> None:
        best = result.get(name)
        ancestors = sorted(set(chain + [name]) | set(best[1] if best else []))
        result[name] = (max(depth, best[0] if best else 0), ancestors)
        for child in groups[name].children:
            walk(child, depth + 1, chain + [name])

    walk("all", 0, [])
    return result


def devices_of(groups: dict[str, Group], known_keys: Iterable[str]) -> list[InventoryDevice]:
    """Every host with its merged variables turned into device keys; unknown ``edgekit_*`` keys are refused."""
    known = set(known_keys)
    tree = ancestry(groups)
    placed: dict[str, set[str]] = {}
    first_seen: dict[str, str] = {}
    for group in groups.values():
        for host, own in group.hosts.items():
            placed.setdefault(host, set()).update(tree[group.name][1])
            first_seen.setdefault(host, next(iter(own.values())).at if own else group.at)
    devices = []
    for host in sorted(placed):
        order = sorted(placed[host], key=lambda g: (tree[g][0], g))
        merged: dict[str, Where] = {}
        for name in order:
            merged.update(groups[name].vars)
        for name in order:  # the host's own variables, from every group that lists it
            merged.update(groups[name].hosts.get(host, {}))
        devices.append(InventoryDevice(host, first_seen[host], device_keys(merged, known),
                                       [g for g in order if g not in IMPLICIT]))
    return devices


def device_keys(variables: dict[str, Where], known: set[str]) -> dict[str, Where]:
    values: dict[str, Where] = {}
    for key, where in variables.items():
        if key in CONNECTION:
            values[CONNECTION[key]] = where
        elif key == "ansible_connection" and where.value == "local":
            values["kind"] = Where("local", where.at)
        elif key.startswith(PREFIX):
            name = key[len(PREFIX):]
            if name not in known:
                raise ConfigError(f"{where.at}: {key}: not one of edgekit's device keys ({', '.join(sorted(known))} "
                                  f"with the {PREFIX} prefix)")
            values[name] = where
    return values


def load_inventory(path: Path, known_keys: Iterable[str]) -> list[InventoryDevice]:
    """An Ansible inventory file (YAML by its suffix or a leading mapping, else INI) as devices."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such inventory file; fix [fleet] inventory in deploy.toml")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the inventory ({exc})") from None
    source = str(path)
    is_yaml = path.suffix in (".yml", ".yaml") or re.match(r"\s*(---|[A-Za-z0-9_.-]+:\s*$)", text, re.M) is not None
    groups = parse_yaml(text, source) if is_yaml else parse_ini(text, source)
    return devices_of(groups, known_keys)


# -- ~/.ssh/config ----------------------------------------------------------------------------------
def ssh_config_devices(path: Path, patterns: dict[str, list[str]]) -> list[InventoryDevice]:
    """The concrete ``Host`` names of an ssh config matching each group's patterns (``jet-*``); the alias is
    the device's host, so HostName, User, Port and IdentityFile come from that file when connecting."""
    import paramiko

    if not path.is_file():
        return []
    try:
        names = paramiko.SSHConfig.from_path(str(path)).get_hostnames()
    except Exception as exc:  # noqa: BLE001 - paramiko raises several kinds on a malformed file
        raise ConfigError(f"{path}: cannot read the ssh config ({exc})") from None
    concrete = sorted(n for n in names if not set(n) & set("*?!"))
    lines = _ssh_host_lines(path)
    found: dict[str, InventoryDevice] = {}
    for group, wanted in patterns.items():
        for name in concrete:
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in wanted):
                at = f"{path}:{lines.get(name, 1)}"
                device = found.setdefault(name, InventoryDevice(name, at, {"host": Where(name, at)}, []))
                device.groups.append(group)
    return [found[name] for name in sorted(found)]


def _ssh_host_lines(path: Path) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        words = line.strip().replace("=", " ", 1).split()
        if len(words) > 1 and words[0].lower() == "host":
            for name in words[1:]:
                lines.setdefault(name, number)
    return lines
