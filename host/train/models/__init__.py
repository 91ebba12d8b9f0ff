"""The model zoo: CIFAR-style networks by name, plus user models as ``module:function``, torchvision's as
``torchvision.models:resnet18`` and timm's as ``timm:resnet18``.

Zoo factories take ``num_classes``, ``width`` (channel multiplier) and ``in_channels`` so pruned
architectures can be rebuilt without pickles; a user's factory gets those of them it accepts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Callable, Dict

from torch import nn

from ...errors import ConfigError

Factory = Callable[..., nn.Module]
_REGISTRY: Dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def wrap(factory: Factory) -> Factory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (never below 4, so no layer vanishes)."""
    return max(4, int(round(channels * width)))


def list_models() -> list[str]:
    _load_zoo()
    return sorted(_REGISTRY)


def create_model(arch: str, num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """A zoo name, ``package.module:function`` (called with the keyword arguments it accepts) or ``timm:name``."""
    _load_zoo()
    if ":" in arch:
        return _user_model(arch, num_classes=num_classes, width=width, in_channels=in_channels)
    if arch not in _REGISTRY:
        raise ConfigError(f"unknown model {arch!r}; choose one of {', '.join(sorted(_REGISTRY))} or 'module:function'")
    return _REGISTRY[arch](num_classes=num_classes, width=width, in_channels=in_channels)


def _user_model(spec: str, num_classes: int, width: float, in_channels: int) -> nn.Module:
    module_name, _, function = spec.partition(":")
    if module_name == "timm":
        return _timm_model(function, num_classes, width, in_channels)
    if module_name == "torchvision":
        module_name = "torchvision.models"
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model {spec!r}: cannot import it ({exc}); is the module on PYTHONPATH?") from None
    except SyntaxError as exc:  # also a source file that is not UTF-8
        raise ConfigError(f"model {spec!r}: {exc.filename}, line {exc.lineno}: {exc.msg}; fix the file") from None
    except Exception as exc:  # noqa: BLE001 - the module fails while imported (or was built for another torch)
        raise ConfigError(f"model {spec!r}: importing {module_name} raised {first_line(exc)}; fix the module, "
                          "or check that it was built for the installed torch") from None
    wanted = {"num_classes": num_classes, "width": width, "in_channels": in_channels}
    kwargs = accepted_arguments(factory, wanted)
    _require_defaults(spec, wanted, kwargs, "its factory takes no such argument")
    try:
        try:
            return factory(**kwargs)
        except TypeError as exc:
            if set(kwargs) == {"num_classes"} or "num_classes" not in kwargs:
                raise
            # **kwargs handed on to a constructor that takes fewer (torchvision's factories): the classes only
            _require_defaults(spec, wanted, {"num_classes": num_classes}, f"its factory does not take it ({exc})")
            return factory(num_classes=num_classes)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the user's factory raises
        raise ConfigError(f"model {spec!r}: its factory failed ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0][:160]


def accepted_arguments(factory: Factory, wanted: dict[str, object]) -> dict[str, object]:
    """The entries of ``wanted`` that ``factory`` names, or all of them when it takes ``**kwargs``."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C extension without a signature: try everything
        return dict(wanted)
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return dict(wanted)
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {key: value for key, value in wanted.items() if key in names}


def _require_defaults(spec: str, wanted: dict[str, object], given: dict[str, object], why: str) -> None:
    """A setting the factory cannot take must be left at its default, else one line naming the key."""
    defaults = {"num_classes": None, "width": 1.0, "in_channels": 3}
    keys = {"num_classes": "model.num_classes", "width": "model.width", "in_channels": "input.shape[0]"}
    for key, value in wanted.items():
        if key not in given and defaults[key] is not None and value != defaults[key]:
            instead = {"width": " (pick a smaller variant of the model instead)",
                       "in_channels": " (give the model 3-channel images)"}[key]
            raise ConfigError(f"model {spec!r}: {keys[key]} = {value} cannot be applied: {why}; set it to "
                              f"{defaults[key]}{instead}")


def _timm_model(name: str, num_classes: int, width: float, in_channels: int) -> nn.Module:
    """``timm:name``: timm.create_model, randomly initialised (pretrained weights are the user's checkpoint)."""
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - timm's import fails with RuntimeError when torchvision mismatches
        raise ConfigError(f"model 'timm:{name}': timm does not import ({first_line(exc)}); install timm (built for "
                          "this torch and torchvision)") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ConfigError(f"model 'timm:{name}': timm has no model {name!r}"
                          + (f"; close: {', '.join(close)}" if close else "; see timm.list_models()"))
    _require_defaults(f"timm:{name}", {"width": width}, {}, "timm models have no width multiplier")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except Exception as exc:  # noqa: BLE001 - timm's builders raise many kinds
        raise ConfigError(f"model 'timm:{name}': timm.create_model failed ({first_line(exc)})") from None


def _load_zoo() -> None:
    from . import mobilenetv2, nin, resnet, vgg  # noqa: F401  (registration side effect)
