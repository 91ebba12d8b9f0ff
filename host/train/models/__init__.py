"""The model zoo: CIFAR-style networks by name, plus user models as ``module:function``.

Factories take ``num_classes``, ``width`` (channel multiplier) and ``in_channels`` so pruned
architectures can be rebuilt without pickles.
"""

from __future__ import annotations

import importlib
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
    """A zoo name, or ``package.module:function`` for a user model with the same keyword arguments."""
    _load_zoo()
    if ":" in arch:
        return _user_model(arch, num_classes=num_classes, width=width, in_channels=in_channels)
    if arch not in _REGISTRY:
        raise ConfigError(f"unknown model {arch!r}; choose one of {', '.join(sorted(_REGISTRY))} or 'module:function'")
    return _REGISTRY[arch](num_classes=num_classes, width=width, in_channels=in_channels)


def _user_model(spec: str, **kwargs: object) -> nn.Module:
    module_name, _, function = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model {spec!r}: cannot import it ({exc}); is the module on PYTHONPATH?") from None
    except SyntaxError as exc:  # also a source file that is not UTF-8
        raise ConfigError(f"model {spec!r}: {exc.filename}, line {exc.lineno}: {exc.msg}; fix the file") from None
    except Exception as exc:  # noqa: BLE001 - the user's module fails while it is imported
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"model {spec!r}: importing {module_name} raised {type(exc).__name__}: {first}; "
                          "fix the module") from None
    try:
        return factory(**kwargs)
    except TypeError:
        return factory(num_classes=kwargs["num_classes"])


def _load_zoo() -> None:
    from . import mobilenetv2, nin, resnet, vgg  # noqa: F401  (registration side effect)
