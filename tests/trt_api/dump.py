"""Run inside a subprocess that can import the bindings: print the module's API surface as JSON.

Kept apart from extract.py because it runs under the wheel's own import path (stub libraries on
LD_LIBRARY_PATH); it uses only the standard library.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from typing import Any, Dict, List, Optional

_DUNDERS = ("__init__", "__len__", "__getitem__", "__setitem__", "__iter__", "__bytes__", "__buffer__", "__int__",
            "__index__", "__enter__", "__exit__", "__del__", "__call__", "__contains__")


def split_params(text: str) -> List[str]:
    """Split 'a: int, b: List[int] = [1, 2]' at top-level commas (brackets and quotes nest)."""
    parts, depth, current, quote = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{<":
            depth += 1
        elif char in ")]}>" and not (char == ">" and current.endswith("-")):
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def parse_param(text: str) -> Dict[str, Any]:
    star = "**" if text.startswith("**") else "*" if text.startswith("*") else ""
    body = text[len(star):]
    name, _, rest = body.partition(":")
    annotation, has_default, default = rest, False, None
    if " = " in rest:
        annotation, default = rest.split(" = ", 1)
        has_default = True
    elif "=" in name:
        name, default = name.split("=", 1)
        has_default = True
    entry = {"name": name.strip(), "type": annotation.strip() or None, "default": has_default}
    if star:
        entry["star"] = star
    if has_default and default is not None and len(default) < 80:
        entry["default_text"] = default.strip()
    return entry


def signatures(name: str, doc: Optional[str]) -> List[Dict[str, Any]]:
    """pybind11's signatures, from the first line of ``__doc__`` (or the numbered overloads)."""
    found = []
    pattern = re.compile(r"^(?:\d+\. )?" + re.escape(name) + r"\((.*)\)(?: -> (.+))?$")
    for line in (doc or "").splitlines():
        match = pattern.match(line.strip())
        if not match:
            continue
        params = [parse_param(p) for p in split_params(match.group(1))]
        found.append({"params": params, "returns": (match.group(2) or "").strip() or None})
    overloaded = [s for s in found if not (len(s["params"]) == 2 and s["params"][0].get("star") == "*"
                                           and s["params"][1].get("star") == "**")]
    return overloaded if len(found) > 1 else found


def python_signature(function: Any) -> List[Dict[str, Any]]:
    try:
        sig = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    params = []
    for param in sig.parameters.values():
        entry = {"name": param.name, "type": None, "default": param.default is not inspect.Parameter.empty}
        if param.kind == param.VAR_POSITIONAL:
            entry["star"] = "*"
        elif param.kind == param.VAR_KEYWORD:
            entry["star"] = "**"
        params.append(entry)
    return [{"params": params, "returns": None, "python": True}]


def describe_callable(name: str, obj: Any) -> Dict[str, Any]:
    sigs = signatures(name, getattr(obj, "__doc__", None))
    if not sigs and inspect.isfunction(obj):
        sigs = python_signature(obj)
    return {"signatures": sigs}


def describe_member(cls: type, name: str) -> Optional[Dict[str, Any]]:
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        doc = raw.fget.__doc__ if raw.fget is not None else None
        returns = None
        for sig in signatures("", None) or []:
            returns = sig["returns"]
        match = re.search(r"\) -> (.+)$", (doc or "").splitlines()[0] if doc else "")
        returns = match.group(1).strip() if match else returns
        setter = None
        if raw.fset is not None and raw.fset.__doc__:
            setter_sigs = signatures("", raw.fset.__doc__) or [
                s for s in [_any_signature(raw.fset.__doc__)] if s]
            setter = setter_sigs[0] if setter_sigs else None
        return {"kind": "property", "readonly": raw.fset is None, "type": returns, "setter": setter}
    if isinstance(raw, staticmethod):
        return dict(describe_callable(name, raw.__func__), kind="static")
    if isinstance(raw, classmethod):
        return dict(describe_callable(name, raw.__func__), kind="static")
    if inspect.isclass(raw):
        return {"kind": "class", "name": raw.__name__}
    value = getattr(cls, name)
    if callable(value) and (inspect.isroutine(raw) or type(raw).__name__ in ("instancemethod", "function")):
        return dict(describe_callable(name, raw), kind="method",
                    python=inspect.isfunction(raw))
    members = getattr(type(value), "__members__", None)
    if isinstance(members, dict) and name in members and members[name] is value:
        return {"kind": "value", "enum": type(value).__name__}
    if callable(value):
        return dict(describe_callable(name, value), kind="method")
    plain = isinstance(value, (int, float, str, bool))
    return {"kind": "constant", "type": type(value).__name__, "value": value if plain else None}


def _any_signature(doc: str) -> Optional[Dict[str, Any]]:
    match = re.match(r"^\w*\((.*)\)(?: -> (.+))?$", doc.splitlines()[0].strip())
    if not match:
        return None
    return {"params": [parse_param(p) for p in split_params(match.group(1))], "returns": match.group(2)}


def describe_class(cls: type) -> Dict[str, Any]:
    members: Dict[str, Any] = {}
    for name in sorted(dir(cls)):
        if name.startswith("__") and name not in _DUNDERS:
            continue
        if name.startswith("_") and not name.startswith("__"):
            continue
        if name.startswith("__") and not any(name in vars(k) for k in cls.__mro__ if k.__module__ != "builtins"
                                             and k.__name__ != "pybind11_object"):
            continue
        described = describe_member(cls, name)
        if described is not None:
            members[name] = described
    for name, signature in list(members.items()):
        if signature.get("kind") == "method" and not signature.get("signatures"):
            signature["signatures"] = signatures(name, getattr(getattr(cls, name), "__doc__", None))
    init = inspect.getattr_static(cls, "__init__", None)
    entry: Dict[str, Any] = {
        "bases": [b.__name__ for b in cls.__bases__],
        "members": members,
        "init": signatures("__init__", getattr(init, "__doc__", None)),
    }
    enum_members = getattr(cls, "__members__", None)
    if isinstance(enum_members, dict):
        entry["enum"] = {k: int(v) for k, v in enum_members.items()}
    return entry


def main() -> None:
    module = __import__(sys.argv[1], fromlist=["_"])
    classes, functions, constants = {}, {}, {}
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if inspect.isclass(value):
            if value.__name__ != name:
                constants[name] = {"alias": value.__name__}
            classes[name] = describe_class(value)
        elif callable(value):
            functions[name] = dict(describe_callable(name, value), python=inspect.isfunction(value))
        elif inspect.ismodule(value):
            constants[name] = {"module": value.__name__}
        else:
            members = getattr(type(value), "__members__", None)
            if isinstance(members, dict) and value in members.values():
                constants[name] = {"enum": type(value).__name__, "member": value.name}
            else:
                constants[name] = {"type": type(value).__name__,
                                   "value": value if isinstance(value, (int, float, str, bool)) else None}
    print(json.dumps({"version": getattr(module, "__version__", None), "classes": classes,
                      "functions": functions, "constants": constants}, sort_keys=True))


if __name__ == "__main__":
    main()
