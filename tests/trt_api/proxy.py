"""A ``tensorrt`` module built from a recorded wheel surface (tests/fixtures/api/tensorrt-<version>.json).

Every class has exactly the wheel's members: a name the wheel lacks raises AttributeError whichever way
it is reached (``trt.X``, another variable, ``getattr`` with a string, a chained call); a method call is
bound against the wheel's pybind11 signatures (argument count, keyword names, enum and class types); a
read-only property cannot be set; a class the wheel gives no constructor cannot be constructed. A Python
subclass of a TensorRT interface (``IProfiler``, ``IProgressMonitor``, calibrators, ``ILogger``,
``IGpuAllocator``...) may only define the base class's method names with the base's arity and must call
the base ``__init__`` (pybind11 refuses otherwise); TensorRT's calls into it (``CALLBACKS``) are made the
way TensorRT makes them, so a missing or misspelled override fails.

Behaviour (what a call returns) comes from ``Semantics``: just enough for the backend to run end to end
(an engine with one input and one output). Every violation is raised *and* recorded in
``module._violations``, so code that swallows exceptions still fails the test.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "api"
# What TensorRT calls on a Python subclass of each interface while it builds or runs (NVIDIA's docs for
# each interface); a name missing from a version's wheel is not called on that version.
CALLBACKS = {
    "IInt8Calibrator": ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache"),
    "IProfiler": ("report_layer_time",),
    "IProgressMonitor": ("phase_start", "step_complete", "phase_finish"),
    "ILogger": ("log",),
    "IGpuAllocator": ("allocate", "deallocate"),
    "IGpuAsyncAllocator": ("allocate_async", "deallocate_async"),
}
ENGINE_BLOB = b"proxy-engine"
_ALIASES = {"typing.SupportsInt": "int", "typing.SupportsFloat": "float", "typing.SupportsIndex": "int",
            "typing_extensions.Buffer": "buffer", "collections.abc.Buffer": "buffer",
            "typing_extensions.CapsuleType": "capsule"}
_PRIMITIVES = {"int": 0, "bool": False, "str": "", "float": 0.0}


class ApiViolation(TypeError):
    """A use of the bindings the real wheel would reject (or silently ignore)."""


def surface_versions() -> List[str]:
    return sorted((p.stem.split("-", 1)[1] for p in FIXTURES.glob("tensorrt-*.json")),
                  key=lambda v: tuple(int(x) for x in v.split(".")))


def load_surface(version: str) -> Dict[str, Any]:
    return json.loads((FIXTURES / "tensorrt-{}.json".format(version)).read_text())


class ProxyEnumValue:
    """One member of a pybind11 enum: name, value, int()/index, hashable, compares by identity of value."""

    __slots__ = ("_enum", "name", "value")

    def __init__(self, enum: type, name: str, value: int) -> None:
        object.__setattr__(self, "_enum", enum)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ProxyEnumValue) and other._enum is self._enum and other.value == self.value

    def __hash__(self) -> int:
        return hash((self._enum.__name__, self.value))

    def __repr__(self) -> str:
        return "<{}.{}: {}>".format(self._enum.__name__, self.name, self.value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("enum values are read-only")


class _Meta(type):
    """Construction as pybind11 does it: the fixture's constructor signatures; a Python subclass must call
    the base ``__init__``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        proxy = cls._proxy_module
        instance = cls.__new__(cls)
        object.__setattr__(instance, "_proxy_state", {"initialised": False})
        cls.__init__(instance, *args, **kwargs)
        if not instance._proxy_state["initialised"]:
            proxy._fail("{}.__init__() must be called when overriding __init__".format(_proxy_base(cls).__name__))
        return instance


def _proxy_base(cls: type) -> type:
    return next(k for k in cls.__mro__ if getattr(k, "_proxy_generated", False) and k.__dict__.get("_proxy_generated"))


def _python_type(text: Optional[str]) -> str:
    """'nvinfer1::ILogger::Severity' → 'ILogger.Severity', 'Optional[IProfiler]' → 'IProfiler'."""
    if not text:
        return ""
    text = re.sub(r"^Optional\[(.*)\]$", r"\1", text.strip())
    text = re.sub(r"^(nvinfer1|nvonnxparser)::", "", text).replace("::", ".")
    return _ALIASES.get(text, text)


class ProxyModule(types.ModuleType):
    """The fake ``tensorrt`` module; ``semantics`` answers calls (see ``Semantics``)."""

    def __init__(self, surface: Dict[str, Any], semantics: Optional["Semantics"] = None) -> None:
        super().__init__("tensorrt")
        self._surface = surface
        self._violations: List[str] = []
        self._classes: Dict[str, type] = {}
        self._semantics = semantics or Semantics()
        self._semantics.trt = self
        self.__version__ = surface["version"]
        for name in surface["classes"]:
            self._class(name)
        filled: set = set()
        for name in surface["classes"]:
            self._fill_with_bases(name, filled)
        for name in surface["classes"]:
            setattr(self, name, self._classes[name])
        for name, spec in surface["functions"].items():
            setattr(self, name, self._function(name, spec))
        for name, spec in surface["constants"].items():
            if "enum" in spec:
                enum = self._find_class(spec["enum"])
                if enum is not None and spec["member"] in getattr(enum, "__members__", {}):
                    setattr(self, name, enum.__members__[spec["member"]])
            elif "value" in spec and spec["value"] is not None:
                setattr(self, name, spec["value"])

    # -- reporting ----------------------------------------------------------------------------------
    def _fail(self, message: str) -> None:
        self._violations.append(message)
        raise ApiViolation("TensorRT {}: {}".format(self.__version__, message))

    # -- classes ------------------------------------------------------------------------------------
    def _class(self, name: str) -> type:
        """The class with its wheel bases (created first), enum members set."""
        if name in self._classes:
            return self._classes[name]
        spec = self._surface["classes"][name]
        module = self

        def init_subclass(cls: type, **kwargs: Any) -> None:
            if not cls.__dict__.get("_proxy_generated"):
                module._check_subclass(cls)

        bases = tuple(self._class(b) for b in spec["bases"] if b in self._surface["classes"]) or (object,)
        namespace = {"_proxy_generated": True, "_proxy_module": self, "_proxy_name": name,
                     "__init_subclass__": classmethod(init_subclass), "__setattr__": _setattr,
                     "__module__": "tensorrt", "__qualname__": name}
        cls = _Meta(name, bases, namespace)
        if "enum" in spec:
            members = {k: ProxyEnumValue(cls, k, v) for k, v in spec["enum"].items()}
            cls.__members__ = members
            for key, value in members.items():
                setattr(cls, key, value)
        self._classes[name] = cls
        return cls

    def _fill_with_bases(self, name: str, filled: set) -> None:
        if name in filled:
            return
        filled.add(name)
        spec = self._surface["classes"][name]
        for base in spec["bases"]:
            if base in self._surface["classes"]:
                self._fill_with_bases(base, filled)
        self._fill(self._classes[name], spec)

    def _fill(self, cls: type, spec: Dict[str, Any]) -> None:
        name = cls.__name__
        nested = {}
        for member, info in spec["members"].items():
            kind = info["kind"]
            if kind == "method" and member.startswith("__") and member not in ("__enter__", "__exit__"):
                continue  # protocols (__getitem__, __len__, __del__...) would answer bytes()/iter() forever
            if kind == "method" and member != "__init__":
                setattr(cls, member, self._method(name, member, info))
            elif kind == "static":
                setattr(cls, member, staticmethod(self._function("{}.{}".format(name, member), info)))
            elif kind == "property":
                setattr(cls, member, self._property(name, member, info))
            elif kind == "value":
                nested.setdefault(info["enum"], []).append(member)
        cls.__init__ = self._constructor(name, spec["init"])
        for enum_name, values in nested.items():
            inherited = getattr(cls, enum_name, None)
            enum = inherited if hasattr(inherited, "__members__") else self._find_class(enum_name)
            if enum is None:  # an enum bound inside the class (Logger.Severity): build it from its values
                enum = _Meta(enum_name, (object,), {"_proxy_generated": True, "_proxy_module": self,
                                                    "_proxy_name": enum_name, "__setattr__": _setattr})
                enum.__members__ = {v: ProxyEnumValue(enum, v, i) for i, v in enumerate(values)}
                self._classes["{}.{}".format(name, enum_name)] = enum
            for value in values:
                if value in enum.__members__:
                    setattr(cls, value, enum.__members__[value])
            if enum_name in spec["members"] and spec["members"][enum_name]["kind"] == "class":
                setattr(cls, enum_name, enum)
        for member, info in spec["members"].items():
            if info["kind"] == "class" and not hasattr(cls, member):
                found = self._find_class(info["name"])
                if found is not None:
                    setattr(cls, member, found)

    def _find_class(self, name: str) -> Optional[type]:
        name = _python_type(name)
        for candidate in (name, name.split(".")[-1], name.lstrip("I") if name.startswith("IParser") else ""):
            if candidate and candidate in self._classes:
                return self._classes[candidate]
        if name.endswith("IParserError"):
            return self._classes.get("ParserError")
        matches = [v for k, v in self._classes.items() if k.endswith("." + name.split(".")[-1])]
        return matches[0] if matches else None

    def _check_subclass(self, cls: type) -> None:
        """A Python override of a TensorRT interface: only the base's method names, with the base's arity."""
        base = _proxy_base(cls)
        for name, value in cls.__dict__.items():
            if name.startswith("_") or not inspect.isfunction(value):
                continue
            info = self._member(base.__name__, name)
            if info is None or info["kind"] != "method":
                self._fail("{} overrides {}.{}, which the bindings do not have (TensorRT would never call it)"
                           .format(cls.__name__, base.__name__, name))
            wanted = {len(s["params"]) for s in info["signatures"]}
            params = list(inspect.signature(value).parameters.values())
            star = any(p.kind in (p.VAR_POSITIONAL,) for p in params)
            required = len([p for p in params if p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD])
            if not star and not any(required <= n <= len(params) for n in wanted):
                self._fail("{}.{} takes {} arguments but TensorRT calls {}.{} with {}".format(
                    cls.__name__, name, len(params), base.__name__, name, sorted(wanted)))

    def _member(self, cls: str, name: str) -> Optional[Dict[str, Any]]:
        """A member of ``cls`` or of one of its bases in the wheel."""
        spec = self._surface["classes"].get(cls)
        if spec is None:
            return None
        if name in spec["members"]:
            return spec["members"][name]
        for base in spec["bases"]:
            found = self._member(base, name)
            if found is not None:
                return found
        return None

    # -- calls --------------------------------------------------------------------------------------
    def _bind(self, where: str, signatures: List[Dict[str, Any]], args: Tuple[Any, ...],
              kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """The arguments bound to the first of the wheel's overloads they fit; else a violation."""
        problems = []
        for signature in signatures:
            params = signature["params"]
            try:
                bound = _signature(params).bind(*args, **kwargs)
            except TypeError as exc:
                problems.append(str(exc))
                continue
            wrong = [self._type_problem(p, bound.arguments[p["name"]]) for p in params if p["name"] in bound.arguments
                     and not p.get("star")]
            wrong = [w for w in wrong if w]
            if not wrong:
                return dict(bound.arguments)
            problems.append("; ".join(wrong))
        if not signatures:
            self._fail("{} has no signature in the wheel".format(where))
        self._fail("{}({}) matches no signature of the wheel ({}): {}".format(
            where, ", ".join([type(a).__name__ for a in args] + ["{}=".format(k) for k in kwargs]),
            " | ".join("({})".format(", ".join(p["name"] for p in s["params"])) for s in signatures),
            "; ".join(problems)))
        return {}

    def _type_problem(self, param: Dict[str, Any], value: Any) -> str:
        text = param.get("type") or ""
        wanted = _python_type(text)
        if not wanted or param["name"] in ("self", "this", "arg0") or (value is None and (
                "Optional" in text or param.get("default_text") == "None" or wanted in self._classes)):
            return ""
        if wanted == "int":
            ok = isinstance(value, (int, np.integer, ProxyEnumValue)) and not isinstance(value, bool)
        elif wanted == "str":
            ok = isinstance(value, str)
        elif wanted == "float":
            ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        elif wanted == "bool":
            ok = isinstance(value, (bool, np.bool_))
        elif wanted == "buffer":
            ok = isinstance(value, (bytes, bytearray, memoryview, np.ndarray))
        else:
            cls = self._find_class(wanted)
            if cls is None or wanted in ("Dims", "Dims2", "Dims3", "Dims4", "DimsHW", "Permutation", "Weights"):
                return ""
            ok = (isinstance(value, ProxyEnumValue) and value._enum is cls) if "__members__" in cls.__dict__ \
                else isinstance(value, cls)
        return "" if ok else "{} must be {}, not {!r}".format(param["name"], wanted, value)

    def _method(self, cls: str, name: str, info: Dict[str, Any]) -> Callable[..., Any]:
        module = self

        def method(this: Any, *args: Any, **kwargs: Any) -> Any:
            where = "{}.{}".format(cls, name)
            if name in module._pure(cls) and _proxy_base(type(this)) is not type(this):
                module._fail("{} does not override {}, which TensorRT calls (pure virtual)".format(
                    type(this).__name__, where))
            arguments = module._bind(where, info["signatures"], (this,) + args, kwargs)
            returns = info["signatures"][0]["returns"] if info["signatures"] else None
            return module._semantics.answer(where, this, arguments, returns)

        method.__name__ = name
        return method

    def _pure(self, cls: str) -> Tuple[str, ...]:
        names: Tuple[str, ...] = ()
        for interface, called in CALLBACKS.items():
            if self._is_subclass_name(cls, interface):
                names += called
        return names

    def _is_subclass_name(self, cls: str, ancestor: str) -> bool:
        if cls == ancestor:
            return True
        spec = self._surface["classes"].get(cls)
        return bool(spec) and any(self._is_subclass_name(b, ancestor) for b in spec["bases"])

    def _function(self, name: str, info: Dict[str, Any]) -> Callable[..., Any]:
        module = self

        def function(*args: Any, **kwargs: Any) -> Any:
            arguments = module._bind(name, info["signatures"], args, kwargs)
            returns = info["signatures"][0]["returns"] if info["signatures"] else None
            return module._semantics.answer(name, None, arguments, returns)

        function.__name__ = name.split(".")[-1]
        return function

    def _constructor(self, cls: str, signatures: List[Dict[str, Any]]) -> Callable[..., None]:
        module = self

        def __init__(this: Any, *args: Any, **kwargs: Any) -> None:
            if not signatures:
                module._fail("{}: No constructor defined! (TensorRT hands these out)".format(cls))
            arguments = module._bind("{}.__init__".format(cls), signatures, (this,) + args, kwargs)
            this._proxy_state.update(arguments, initialised=True)
            module._semantics.answer("{}.__init__".format(cls), this, arguments, None)

        return __init__

    def _property(self, cls: str, name: str, info: Dict[str, Any]) -> property:
        module = self
        where = "{}.{}".format(cls, name)

        def getter(this: Any) -> Any:
            if name in this._proxy_state:
                return this._proxy_state[name]
            return module._semantics.answer(where, this, {}, info.get("type"))

        def setter(this: Any, value: Any) -> None:
            if info["readonly"]:
                module._fail("{} is read-only".format(where))
            setter_params = (info.get("setter") or {}).get("params") or []
            if len(setter_params) == 2:
                problem = module._type_problem(dict(setter_params[1], name=name), value)
                if problem:
                    module._fail("{}: {}".format(where, problem))
            this._proxy_state[name] = value

        return property(getter, setter)

    # -- TensorRT calling back into Python ------------------------------------------------------------
    def callback(self, obj: Any, interface: str) -> None:
        """Call ``obj``'s overrides the way TensorRT does: each name in CALLBACKS the wheel has, positionally,
        with as many arguments as the base signature declares."""
        for interface_name, names in CALLBACKS.items():
            if not self._is_subclass_name(_proxy_base(type(obj)).__name__, interface_name):
                continue
            for name in names:
                info = self._member(_proxy_base(type(obj)).__name__, name)
                if info is None or not info.get("signatures"):
                    continue
                params = info["signatures"][0]["params"][1:]
                implementation = getattr(type(obj), name)
                if getattr(implementation, "__name__", "") == name and implementation is getattr(
                        _proxy_base(type(obj)), name, None):
                    self._fail("{} does not override {}.{}, which TensorRT calls".format(
                        type(obj).__name__, interface_name, name))
                result = implementation(obj, *[_sample(p.get("type")) for p in params])
                self._check_return(type(obj).__name__ + "." + name, info["signatures"][0]["returns"], result)

    def _check_return(self, where: str, returns: Optional[str], value: Any) -> None:
        wanted = _python_type(returns)
        checks = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "bool": lambda v: isinstance(v, bool),
                  "buffer": lambda v: v is None or isinstance(v, (bytes, bytearray, memoryview)),
                  "None": lambda v: v is None}
        if wanted in checks and not checks[wanted](value):
            self._fail("{} returned {!r}; TensorRT expects {}".format(where, value, wanted))


def _setattr(this: Any, name: str, value: Any) -> None:
    """pybind11 objects take no new attributes; Python subclasses of them have a __dict__."""
    cls = type(this)
    if name != "_proxy_state" and getattr(cls, "_proxy_generated", False) and cls.__dict__.get("_proxy_generated") \
            and not isinstance(inspect.getattr_static(cls, name, None), property):
        cls._proxy_module._fail("{} has no attribute {!r} to set".format(cls.__name__, name))
    object.__setattr__(this, name, value)


def _signature(params: List[Dict[str, Any]]) -> inspect.Signature:
    built, seen_default = [], False
    for param in params:
        name = re.sub(r"\W", "_", param["name"]) or "arg"
        if param.get("star") == "*":
            built.append(inspect.Parameter(name, inspect.Parameter.VAR_POSITIONAL))
        elif param.get("star") == "**":
            built.append(inspect.Parameter(name, inspect.Parameter.VAR_KEYWORD))
        else:
            seen_default = seen_default or param["default"]
            default = None if param["default"] or seen_default else inspect.Parameter.empty
            built.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(built)


def _sample(type_text: Optional[str]) -> Any:
    """An argument of the declared type for a callback."""
    wanted = _python_type(type_text)
    if wanted.startswith("List[str]"):
        return ["input"]
    return {"str": "layer", "float": 0.25, "int": 1, "bool": True, "buffer": b"cache", "capsule": 0}.get(wanted)


class Semantics:
    """What the proxy's calls return: a tiny engine (one input ``input``, one output ``output``, ``classes``
    logits), layers that can all run on DLA, ``dla_cores`` DLA cores; TensorRT's callbacks made during
    build (progress monitor, calibrator) and execution (profiler)."""

    def __init__(self, dla_cores: int = 0, classes: int = 10, chw: Tuple[int, ...] = (3, 8, 8),
                 parse_ok: bool = True) -> None:
        self.dla_cores, self.classes, self.chw, self.parse_ok = dla_cores, classes, chw, parse_ok
        self.trt: Any = None
        self.calls: List[str] = []
        self.built_flags: List[List[str]] = []  # the builder config's flags at each build_serialized_network

    def answer(self, where: str, this: Any, arguments: Dict[str, Any], returns: Optional[str]) -> Any:
        self.calls.append(where)
        handler = getattr(self, "on_" + where.replace(".", "_"), None)
        if handler is not None:
            return handler(this, arguments)
        return self.default(returns)

    def default(self, returns: Optional[str]) -> Any:
        wanted = _python_type(returns)
        if wanted in _PRIMITIVES:
            return _PRIMITIVES[wanted]
        cls = self.trt._find_class(wanted) if wanted and wanted != "None" else None
        if cls is None:
            return None
        if hasattr(cls, "__members__") and cls.__members__:
            return next(iter(cls.__members__.values()))
        return self.new(cls.__name__)

    def new(self, class_name: str, **state: Any) -> Any:
        cls = self.trt._classes[class_name]
        instance = cls.__new__(cls)
        object.__setattr__(instance, "_proxy_state", dict(state, initialised=True))
        return instance

    # -- build ------------------------------------------------------------------------------------------
    def on_Builder_num_DLA_cores(self, this: Any, args: Dict[str, Any]) -> int:
        return self.dla_cores

    def on_INetworkDefinition_num_layers(self, this: Any, args: Dict[str, Any]) -> int:
        return 3

    def on_INetworkDefinition_get_layer(self, this: Any, args: Dict[str, Any]) -> Any:
        return self.new("ILayer", name="layer{}".format(args["index"]))

    def on_IBuilderConfig_can_run_on_DLA(self, this: Any, args: Dict[str, Any]) -> bool:
        return True

    def on_OnnxParser_parse(self, this: Any, args: Dict[str, Any]) -> bool:
        return self.parse_ok

    def on_OnnxParser_num_errors(self, this: Any, args: Dict[str, Any]) -> int:
        return 0 if self.parse_ok else 1

    def on_ParserError_desc(self, this: Any, args: Dict[str, Any]) -> str:
        return "No importer registered for op: FancyOp"

    def on_ParserError_node(self, this: Any, args: Dict[str, Any]) -> int:
        return 1

    def on_IBuilderConfig_create_timing_cache(self, this: Any, args: Dict[str, Any]) -> Any:
        cache = self.new("ITimingCache", blob=bytes(args["serialized_timing_cache"]))
        return cache

    def on_IBuilderConfig_set_timing_cache(self, this: Any, args: Dict[str, Any]) -> bool:
        this._proxy_state["timing_cache"] = args["cache"]
        return True

    def on_IBuilderConfig_get_timing_cache(self, this: Any, args: Dict[str, Any]) -> Any:
        return this._proxy_state.get("timing_cache")

    def on_ITimingCache_serialize(self, this: Any, args: Dict[str, Any]) -> Any:
        return self.new("IHostMemory", blob=this._proxy_state.get("blob", b"") + b"+timing")

    # -- builder flags: a new config has TF32 set (TensorRT >= 7.1's default), the others cleared ----------------
    def _flags(self, config: Any) -> set:
        return config._proxy_state.setdefault("flags", {"TF32"} & set(self.trt.BuilderFlag.__members__))

    def on_IBuilderConfig_set_flag(self, this: Any, args: Dict[str, Any]) -> None:
        self._flags(this).add(args["flag"].name)

    def on_IBuilderConfig_clear_flag(self, this: Any, args: Dict[str, Any]) -> None:
        self._flags(this).discard(args["flag"].name)

    def on_IBuilderConfig_get_flag(self, this: Any, args: Dict[str, Any]) -> bool:
        return args["flag"].name in self._flags(this)

    def on_Builder_build_serialized_network(self, this: Any, args: Dict[str, Any]) -> Any:
        config = args["config"]
        self.built_flags.append(sorted(self._flags(config)))
        for name in ("progress_monitor", "int8_calibrator"):
            hook = config._proxy_state.get(name)
            if hook is not None:
                self.trt.callback(hook, name)
        return self.new("IHostMemory", blob=ENGINE_BLOB)

    # -- run --------------------------------------------------------------------------------------------
    def on_Runtime_deserialize_cuda_engine(self, this: Any, args: Dict[str, Any]) -> Any:
        blob = bytes(next(iter(v for k, v in args.items() if k != "self")))
        return self.new("ICudaEngine") if blob == ENGINE_BLOB else None

    def on_ICudaEngine_num_io_tensors(self, this: Any, args: Dict[str, Any]) -> int:
        return 2

    def on_ICudaEngine_get_tensor_name(self, this: Any, args: Dict[str, Any]) -> str:
        return ("input", "output")[args["index"]]

    def on_ICudaEngine_get_tensor_mode(self, this: Any, args: Dict[str, Any]) -> Any:
        mode = self.trt.TensorIOMode
        return mode.INPUT if args["name"] == "input" else mode.OUTPUT

    def on_ICudaEngine_get_tensor_shape(self, this: Any, args: Dict[str, Any]) -> Tuple[int, ...]:
        return (-1,) + self.chw if args["name"] == "input" else (-1, self.classes)

    def on_ICudaEngine_get_tensor_dtype(self, this: Any, args: Dict[str, Any]) -> Any:
        return self.trt.DataType.FLOAT

    def on_ICudaEngine_create_execution_context(self, this: Any, args: Dict[str, Any]) -> Any:
        return self.new("IExecutionContext", shape=None)

    def on_IExecutionContext_set_input_shape(self, this: Any, args: Dict[str, Any]) -> bool:
        this._proxy_state["shape"] = tuple(args["shape"])
        return True

    def on_IExecutionContext_get_tensor_shape(self, this: Any, args: Dict[str, Any]) -> Tuple[int, ...]:
        shape = this._proxy_state.get("shape") or (-1,) + self.chw
        return shape if args["name"] == "input" else (shape[0], self.classes)

    def on_IExecutionContext_set_tensor_address(self, this: Any, args: Dict[str, Any]) -> bool:
        return True

    def on_IExecutionContext_execute_async_v3(self, this: Any, args: Dict[str, Any]) -> bool:
        profiler = this._proxy_state.get("profiler")
        if profiler is not None:
            self.trt.callback(profiler, "profiler")
        return True

    def on_nptype(self, this: Any, args: Dict[str, Any]) -> Any:
        dtype = self.trt.DataType
        table = {dtype.FLOAT: np.float32, dtype.HALF: np.float16, dtype.INT8: np.int8, dtype.INT32: np.int32,
                 dtype.BOOL: np.bool_}
        return table[next(iter(args.values()))]


def _bytes(this: Any) -> bytes:
    """IHostMemory has pybind11's buffer protocol: bytes() of it is the blob."""
    return bytes(this._proxy_state.get("blob", b""))


def tensorrt_module(version: str, semantics: Optional[Semantics] = None) -> ProxyModule:
    """The proxy ``tensorrt`` of one recorded wheel."""
    module = ProxyModule(load_surface(version), semantics)
    module.IHostMemory.__bytes__ = _bytes  # the buffer protocol, which the surface cannot list
    return module
