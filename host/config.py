"""deploy.toml → typed, validated configuration.

Every error is one line naming the file and the key (``deploy.toml: model.width: ...``); relative
paths resolve against the file's own directory, so a project works from any working directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional, Union

import tomllib
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..device.contract.benchmark import BASELINE, CV_WARN_PERCENT, DURATION_S, MIN_ITERATIONS, ROUNDS, WARMUP_S
from .errors import ConfigError

Precision = Literal["fp32", "fp16", "int8", "auto"]  # auto: the device builds each, ships the fastest valid
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a project's name, and a device's


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSection(Strict):
    name: str = Field(pattern=NAME)


class ModelSection(Strict):
    arch: str = Field(min_length=1, description="zoo name or module:function")
    width: float = Field(default=1.0, gt=0, le=8)
    num_classes: int = Field(default=10, ge=2)
    checkpoint: Path
    output: Union[int, str] = Field(default=0, description="the classifier's output: index of a tuple or dict key")


class DataSection(Strict):
    format: Literal["cifar", "folder"] = "cifar"
    path: Path
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    skip_unreadable: bool = Field(default=False, description="folder data sets: leave out (and count) images that "
                                                             "cannot be decoded instead of stopping")

    @model_validator(mode="after")
    def _stats(self) -> "DataSection":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then they are computed from the training images)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class InputSection(Strict):
    name: str = "input"
    shape: list[int] = Field(default=[3, 32, 32])
    batch_sizes: list[int] = Field(default=[1, 32])

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or any(d <= 0 for d in value):
            raise ValueError(f"must be [channels, height, width] with positive sizes, got {value}")
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, value: list[int]) -> list[int]:
        if not value or any(b <= 0 or b > 4096 for b in value):
            raise ValueError(f"must be a non-empty list of batch sizes between 1 and 4096, got {value}")
        return sorted(set(value))


class TrainSection(Strict):
    epochs: int = Field(default=15, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    augment: list[Literal["crop", "flip"]] = Field(default=["crop", "flip"])
    seed: int = 0
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="torch work on the host: auto = CUDA when present, else CPU")
    amp: bool = Field(default=False, description="mixed precision (float16 on CUDA, bfloat16 on the CPU)")
    nproc: int = Field(default=1, ge=1, le=256, description="processes of torch.distributed (DDP) that edgekit "
                       "starts for training stages (torchrun's own workers need not set it)")


class OptimizeSection(Strict):
    fold_bn: bool = True
    opset: int = Field(default=17, ge=13, le=21)
    reference_samples: int = Field(default=64, ge=1, le=10000)


class QuantizeSection(Strict):
    enabled: bool = True
    # percentile by default: entropy (TensorRT's KL method) can clip early ReLU outputs of small networks
    # far too hard (seen here: 2.7 → 0.94, top-1 97.5% → 79%); it stays one setting away.
    method: Literal["entropy", "percentile", "minmax", "mse"] = "percentile"
    percentile: float = Field(default=99.99, gt=50, le=100)
    images: int = Field(default=512, ge=1, le=100_000)
    source: Optional[Path] = Field(default=None, description="default: the data set's training images")
    batch_size: int = Field(default=32, ge=1, le=4096)
    max_accuracy_drop: Optional[float] = Field(default=0.01, ge=0, le=1)
    mixed_precision: bool = True
    # quantisation-aware training: N epochs, 0 = off, "auto" = only when post-training INT8 (with the
    # mixed-precision fallback) misses max_accuracy_drop or keeps more than qat_max_float_layers in float
    qat_epochs: Union[int, Literal["auto"]] = 0
    qat_auto_epochs: int = Field(default=5, ge=1, le=1000)
    qat_max_float_layers: int = Field(default=0, ge=0)
    qat_lr: float = Field(default=1e-3, gt=0, le=1)

    @field_validator("qat_epochs", mode="before")
    @classmethod
    def _qat_epochs(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1000):
            return value
        raise ValueError('must be a number of epochs from 0 (off) to 1000, or "auto"')


class PruneSection(Strict):
    enabled: bool = False
    method: Literal["magnitude", "bn_scale", "taylor"] = "magnitude"
    norm: Literal[1, 2] = 2
    ratio: float = Field(default=0.5, gt=0, lt=1)
    scope: Literal["uniform", "global"] = "uniform"
    max_layer_ratio: float = Field(default=0.9, gt=0, lt=1)
    cost_weight: float = Field(default=0.0, ge=0, le=2)
    round_to: int = Field(default=8, ge=1, le=256)
    protect: list[str] = Field(default_factory=list)
    steps: int = Field(default=1, ge=1, le=50)
    finetune_epochs: int = Field(default=5, ge=0)
    lr: float = Field(default=0.01, gt=0)
    distill: bool = False
    distill_temperature: float = Field(default=4.0, gt=0)
    distill_alpha: float = Field(default=0.7, ge=0, le=1)
    max_accuracy_drop: Optional[float] = Field(default=0.01, ge=0, le=1)
    allow_accuracy_drop: bool = Field(default=False, description="push even when pruning misses max_accuracy_drop")
    early_stop: bool = True
    sparsity_epochs: int = Field(default=3, ge=0)
    sparsity_lambda: float = Field(default=1e-4, ge=0)
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    # prune to a latency measured on the device being pushed to, instead of by ratio (host/optimize/prune/latency.py)
    target_latency_ms: Optional[float] = Field(default=None, gt=0, description="median latency wanted on the device")
    target_speedup: Optional[float] = Field(default=None, gt=1, description="or: the report's baseline latency / this")
    target_batch: int = Field(default=1, ge=1, le=4096, description="the batch size the target is for")
    latency_budget_s: float = Field(default=300.0, gt=0, le=3600, description="bound on measuring the latency model")
    latency_model: Literal["layers", "profile"] = Field(
        default="layers", description="CPU runtimes: time each layer variant, or profile a few whole models")
    align_to_device: bool = Field(default=True, description="widths in multiples of the channels the device's "
                                  "layout packs (runtimes.channel_multiple), as well as of round_to")
    trial: bool = Field(default=True, description="fine-tune the search's widths, uniform ones, a blend and widths "
                                                  "shaped by latency per channel briefly; "
                                                  "keep the one that recovers best (prune/trial.py)")

    @model_validator(mode="after")
    def _cost_weight(self) -> "PruneSection":
        if self.cost_weight and self.scope != "uniform":
            raise ValueError('cost_weight shapes uniform pruning only; set scope = "uniform" or remove cost_weight')
        if self.target_latency_ms is not None and self.target_speedup is not None:
            raise ValueError("target_latency_ms and target_speedup both set; keep one of them")
        return self

    @property
    def latency_target(self) -> bool:
        """Widths chosen against the device's latency model rather than by ``ratio``."""
        return self.enabled and (self.target_latency_ms is not None or self.target_speedup is not None)


class BenchmarkSection(Strict):
    # the defaults are the manifest's, which the device falls back on too (edgekit.device.contract.benchmark)
    warmup_s: float = Field(default=WARMUP_S, ge=0)
    duration_s: float = Field(default=DURATION_S, gt=0)
    min_iterations: int = Field(default=MIN_ITERATIONS, ge=1)
    cv_warn_percent: float = Field(default=CV_WARN_PERCENT, gt=0)
    cross_check: bool = Field(default=False, description="TensorRT: also run trtexec on the engine, flag >5% apart")
    # the unpruned FP32 model benchmarked beside the final one, in alternating rounds: the report's speed-up
    baseline: bool = BASELINE
    rounds: int = Field(default=ROUNDS, ge=1, le=50)


class ValidationSection(Strict):
    min_top1_agreement: Optional[float] = Field(default=None, ge=0, le=1)
    min_cosine: Optional[float] = Field(default=None, ge=-1, le=1)


class BudgetSection(Strict):
    max_p99_ms: Optional[float] = Field(default=None, gt=0)
    max_median_ms: Optional[float] = Field(default=None, gt=0)
    min_host_accuracy: Optional[float] = Field(default=None, ge=0, le=1)


class DeviceSection(Strict):
    kind: Literal["local", "ssh"] = "ssh"
    host: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = Field(default=None, ge=1, le=65535)
    root: str = "~/.edgekit"
    venv: str = Field(default="", description="the device's edgekit virtualenv; default <root>/venv")
    python: str = Field(default="python3", description="the device interpreter the venv is made from")
    backend: Literal["auto", "onnxruntime", "openvino", "tensorrt"] = "auto"
    precision: Precision = "fp32"
    allow_fallback: bool = False
    threads: int = Field(default=0, ge=0)
    int8_mode: Literal["explicit", "implicit"] = "explicit"
    openvino_device: Optional[str] = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9.,:_]*$",
                                           description="OpenVINO device (CPU, GPU, NPU, AUTO...); default CPU")
    dla_core: Optional[int] = Field(default=None, ge=0, le=7)
    workspace_mb: int = Field(default=1024, ge=16)
    builder_optimization_level: Optional[int] = Field(default=None, ge=0, le=5)
    cuda_graph: bool = False
    profile_layers: bool = False
    groups: list[str] = Field(default_factory=list)
    store_limit_mb: Optional[float] = Field(default=None, gt=0, description="engines + blobs kept under this (LRU)")
    min_free_mb: Optional[float] = Field(default=None, ge=0, description="free disk the agent keeps; pushes that "
                                                                          "would cross it are refused")
    keep_jobs: Optional[int] = Field(default=None, ge=1, description="the last N jobs are never collected")

    @model_validator(mode="after")
    def _host(self) -> "DeviceSection":
        if self.kind == "ssh" and not self.host:
            raise ValueError("an ssh device needs host = \"name-or-address\"")
        return self


class FleetSection(Strict):
    """Devices kept outside deploy.toml (host/ship/inventory.py); a [devices.NAME] table of the same name wins."""

    inventory: Optional[Path] = Field(default=None, description="an Ansible inventory, INI or YAML")
    ssh_config: Optional[Path] = Field(default=None, description="where ssh_groups look; default ~/.ssh/config")
    ssh_groups: dict[str, list[str]] = Field(default_factory=dict,
                                             description='group = ["jet-*"]: the ssh config Host names matching')


class Config(Strict):
    project: ProjectSection
    model: ModelSection
    data: DataSection
    input: InputSection = InputSection()
    train: TrainSection = TrainSection()
    optimize: OptimizeSection = OptimizeSection()
    quantize: QuantizeSection = QuantizeSection()
    prune: PruneSection = PruneSection()
    benchmark: BenchmarkSection = BenchmarkSection()
    validation: ValidationSection = ValidationSection()
    budget: BudgetSection = BudgetSection()
    devices: dict[str, DeviceSection] = Field(default_factory=dict)
    fleet: FleetSection = FleetSection()

    # Set by load_config: where the file is, for paths and messages.
    path: Path = Path("deploy.toml")
    # Set by a push with a latency target: the device's latency model (host/ship/latency.py), read by prune.
    _latency_model: Optional[Path] = PrivateAttr(default=None)

    def with_latency_model(self, path: Path) -> "Config":
        """This config for one device: pruning reads that device's latency model (its content keys the stage)."""
        copy = self.model_copy()
        copy._latency_model = path
        return copy

    @property
    def latency_model(self) -> Optional[Path]:
        return self._latency_model

    @property
    def base(self) -> Path:
        return self.path.parent

    def resolve(self, path: Path) -> Path:
        return (self.base / Path(os.path.expanduser(str(path)))).resolve()

    @property
    def checkpoint(self) -> Path:
        return self.resolve(self.model.checkpoint)

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data.path)

    @property
    def state_dir(self) -> Path:
        """Per-project host state: optimisation cache and run history."""
        return self.base / ".edgekit"

    def device(self, name: str) -> DeviceSection:
        """A declared device, or the built-in ``local``; a local device's root defaults to one place.

        Declaring ``[devices.local]`` changes only what it declares: without ``root`` it keeps the built-in
        root (``$EDGEKIT_HOME/local-device``), so the same agent and the same ``current`` are used.
        """
        if name in self.devices:
            device = self.devices[name]
            if device.kind == "local" and "root" not in device.model_fields_set:
                return device.model_copy(update={"root": str(local_root(name))})
            return device
        if name == "local":
            return DeviceSection(kind="local", root=str(local_root(name)))
        known = ", ".join(sorted(set(self.devices) | {"local"}))
        raise ConfigError(f"{self.path.name}: no device {name!r} under [devices]; known devices: {known}")

    def require_checkpoint(self) -> Path:
        if not self.checkpoint.is_file():
            raise ConfigError(f"{self.path.name}: model.checkpoint: {self.checkpoint} does not exist; "
                              "run `edgekit train` first or fix the path")
        return self.checkpoint


def local_root(name: str) -> Path:
    """Where a local device keeps its agent root unless deploy.toml sets ``root``."""
    return host_home() / ("local-device" if name == "local" else f"local-device-{name}")


def host_home() -> Path:
    """The user's edgekit directory (signing key, local device); EDGEKIT_HOME moves it (tests do)."""
    configured = os.environ.get("EDGEKIT_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME", "~/.config")).expanduser() / "edgekit"


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; check the spelling against the README's deploy.toml reference"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    return f"{key}: {message}{shown}"


def read_toml_text(path: Path) -> str:
    """deploy.toml's text: UTF-8 (TOML's only encoding; a leading BOM is allowed), else one line with the line
    number and the byte, as an editor saving Latin-1 or UTF-16 leaves it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: saved as UTF-16; TOML files are UTF-8: save it again as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8 (TOML files are UTF-8); "
                          "save the file as UTF-8 or remove the character") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ConfigError(f"{path}: line {line}: a NUL byte (the file is damaged or binary); fix or rewrite that line")
    return text.removeprefix("\ufeff")


def load_config(path: Path | str = "deploy.toml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; run `edgekit init` to create one, or pass --config")
    try:
        data = tomllib.loads(read_toml_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "path" in data:
        raise ConfigError(f"{path}: path: unknown key")
    try:
        config = Config(**data, path=path.resolve())
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None
    for name, device in config.devices.items():
        if name == "local" and device.kind != "local":
            raise ConfigError(f"{path}: devices.local: the name 'local' is reserved for the built-in local device")
    return with_fleet_devices(config)


def with_fleet_devices(config: Config) -> Config:
    """deploy.toml's devices plus those of ``[fleet]``'s inventory and ssh config groups, each validated as a
    ``[devices.*]`` table; a mistake names the inventory's file and line."""
    from .ship.inventory import load_inventory, ssh_config_devices, ssh_config_path

    fleet = config.fleet
    found = []
    if fleet.inventory is not None:
        found += load_inventory(config.resolve(fleet.inventory), set(DeviceSection.model_fields) - {"groups"})
    if fleet.ssh_groups:
        path = config.resolve(fleet.ssh_config) if fleet.ssh_config else ssh_config_path()
        found += ssh_config_devices(path, fleet.ssh_groups)
    devices = {}
    for entry in found:
        if entry.name in config.devices or entry.name in devices:
            continue  # deploy.toml's own table wins; the inventory comes before the ssh config
        if not re.fullmatch(NAME, entry.name) or entry.name == "local":
            raise ConfigError(f"{entry.at}: host {entry.name!r} cannot be a device name: use letters, digits, '.', "
                              "'_' or '-' ('local' is built in)")
        devices[entry.name] = _inventory_device(entry)
    if not devices:
        return config
    return config.model_copy(update={"devices": {**config.devices, **devices}})


def _inventory_device(entry) -> DeviceSection:
    values = {key: where.value for key, where in entry.values.items()}
    if values.get("kind", "ssh") == "ssh":
        values.setdefault("host", entry.name)  # Ansible's default: the inventory name is the address
    try:
        return DeviceSection(**values, groups=entry.groups)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        at = entry.values[key].at if key in entry.values else entry.at
        shown = f" (got {error.get('input')!r})" if key in entry.values else ""
        name = {"host": "ansible_host", "user": "ansible_user", "port": "ansible_port"}.get(key, f"edgekit_{key}")
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{at}: host {entry.name}: {name if key else 'device'}: {message}{shown}") from None


# -- writing deploy.toml ----------------------------------------------------------------------------
def deploy_toml(**sections: Mapping[str, Any]) -> str:
    """deploy.toml text: one ``[table]`` per keyword argument and one ``key = value`` line per entry, in order.

    A mapping inside a section is a table of its own (``devices={"local": {...}}`` → ``[devices.local]``);
    a None value is left out (TOML has no null). What ``edgekit init``, the tests and the benchmarks write.
    """
    blocks: list[str] = []

    def table(name: str, values: Mapping[str, Any]) -> None:
        keys = {k: v for k, v in values.items() if v is not None and not isinstance(v, Mapping)}
        tables = {k: v for k, v in values.items() if isinstance(v, Mapping)}
        if keys or not tables:
            blocks.append("\n".join([f"[{name}]", *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in keys.items())]))
        for key, sub in tables.items():
            table(f"{name}.{_toml_key(key)}", sub)

    for name, values in sections.items():
        table(_toml_key(name), values)
    return "\n\n".join(blocks) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, (str, Path)):  # a JSON string is a TOML basic string, but for DEL
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"deploy.toml: no TOML form for {value!r}")
