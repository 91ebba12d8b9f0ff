"""Structured channel pruning on torch-pruning's dependency graph, with hardware-aligned widths.

torch-pruning finds which layers are coupled (residual adds, concatenations, depthwise and grouped
convolutions) and scores channels; edgekit decides how many channels each group keeps: the nearest
multiple of ``round_to`` (torch-pruning's own ``round_to`` rounds down and over-prunes around grouped
convolutions), never more than ``max_layer_ratio`` of a layer's original width, and every width is
checked afterwards. The result is saved as torch-pruning's pruning history (JSON) plus a state_dict.
"""

from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch_pruning as tp
from torch import nn

from ...config import PruneSection
from ...errors import ConfigError
from ...outputs import OutputKey, check_classifier, named_outputs, nearest_producers, output_layers, select
from .probe import Cut, channel_mixers, culprits

Say = Callable[[str], None]


# -- pure allocation --------------------------------------------------------------------------
def aligned_width(target: float, current: int, round_to: int, ch_groups: int = 1) -> int:
    """Kept channels: the multiple of lcm(round_to, ch_groups) nearest to ``target``, within [unit, current].

    A layer narrower than one unit is left as it is (nothing to align to).
    """
    unit = round_to * ch_groups // math.gcd(round_to, ch_groups) if round_to > 1 else ch_groups
    if current <= unit:
        return current
    kept = max(unit, int(math.floor(target / unit + 0.5)) * unit)
    return min(kept, current - (current % unit) if current % unit else current)


def cost_weighted_ratios(original: dict[str, int], costs: dict[str, float], ratio: float, weight: float,
                         cap: float) -> dict[str, float]:
    """Per-group ratios ∝ (cost per channel)^weight, scaled so that ``ratio`` of all channels still go.

    ``weight`` 0 is plain uniform pruning. A channel of an early, high-resolution layer costs tens of
    times the MACs (and memory traffic) of one at 4×4, yet uniform pruning removes both alike; a
    positive weight moves the cut towards where the time is spent without changing how many channels
    are removed. Each ratio is capped at ``cap``; the scale is found by bisection.
    """
    if weight == 0 or not original:
        return {name: ratio for name in original}
    mean = sum(costs.values()) / len(costs)
    relative = {name: (costs[name] / mean) ** weight if mean > 0 else 1.0 for name in original}
    total = sum(original.values())

    def removed(scale: float) -> float:
        return sum(min(cap, ratio * scale * relative[n]) * w for n, w in original.items())

    low, high = 0.0, 1.0
    while removed(high) < ratio * total and high < 1e6:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if removed(middle) < ratio * total else (low, middle)
    return {name: min(cap, ratio * high * relative[name]) for name in original}


def kept_widths_uniform(original: dict[str, int], current: dict[str, int], ratios: dict[str, float], step: int,
                        steps: int, round_to: int, ch_groups: dict[str, int]) -> dict[str, int]:
    """Per group, step ``step`` of ``steps`` on a straight line from the original width to (1-ratio)×it."""
    result = {}
    for name, width in original.items():
        final = width * (1 - ratios[name])
        target = width - (width - final) * step / steps
        result[name] = min(current[name], aligned_width(target, width, round_to, ch_groups.get(name, 1)))
    return result


def cap_widths(kept: dict[str, int], original: dict[str, int], max_layer_ratio: float, round_to: int,
               ch_groups: dict[str, int]) -> dict[str, int]:
    """No layer loses more than ``max_layer_ratio`` of its original channels (rounded up to a unit)."""
    capped = {}
    for name, width in kept.items():
        floor = original[name] * (1 - max_layer_ratio)
        if width < floor:
            unit = math.lcm(round_to, ch_groups.get(name, 1))
            width = min(original[name], int(math.ceil(floor / unit)) * unit)
        capped[name] = width
    return capped


def kept_widths_global(scores: dict[str, torch.Tensor], original: dict[str, int], current: dict[str, int],
                       ratio: float, step: int, steps: int, round_to: int,
                       ch_groups: dict[str, int]) -> dict[str, int]:
    """One threshold over every group's (mean-normalised) channel scores, then per-group alignment."""
    total = sum(original.values())
    keep_total = total * (1 - ratio * step / steps)
    ranked = torch.cat([s.flatten() for s in scores.values()])
    drop = max(0, int(round(sum(current.values()) - keep_total)))
    if drop == 0 or drop >= len(ranked):
        return dict(current)
    threshold = torch.kthvalue(ranked, drop).values
    result = {}
    for name, score in scores.items():
        survivors = int((score > threshold).sum()) * ch_groups.get(name, 1)
        result[name] = min(current[name], aligned_width(survivors, original[name], round_to, ch_groups.get(name, 1)))
    return result


# -- the dependency graph ---------------------------------------------------------------------
@dataclass
class PruneGroup:
    name: str
    group: Any
    root: nn.Module
    width: int
    ch_groups: int


def check_trainable(model: nn.Module) -> None:
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ConfigError(f"the model has {len(frozen)} frozen parameter(s) (first: {frozen[0]}); torch-pruning "
                          "would silently leave them unpruned. Set requires_grad=True on every parameter first")


# Ops whose channel-index mapping torch-pruning failed to work out, per graph (node → why): the groups
# through them stay whole. torch-pruning redoes the mapping on every group query, so this holds for the
# graph's lifetime.
_UNMAPPED: "weakref.WeakKeyDictionary[tp.DependencyGraph, dict[Any, str]]" = weakref.WeakKeyDictionary()


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph, built quietly; an op whose index mapping fails is recorded, not fatal.

    ``verbose=False``: torch-pruning otherwise warns, in six lines per build and a dozen builds per push,
    about bare per-channel parameters (ConvNeXt's layer scale) and ops it treats as element-wise. Both are
    what the probe (``unfollowable``) checks on real images, and what it cannot follow it names itself.
    torchvision's ShuffleNetV2 makes torch-pruning divide by zero mapping its channel shuffle: that one
    op is recorded (``unmapped_groups`` leaves the groups through it unpruned) and the rest is pruned.
    """
    _tolerate_index_mapping_failures()
    _bound_index_mappings()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:  # noqa: BLE001 - torch-pruning raises many kinds on untraceable models
        raise ConfigError(f"torch-pruning cannot trace this model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''}), so no layer can be pruned; "
                          "set prune.enabled = false") from None
    return graph


MAX_INDICES = 1 << 20  # channel indices one mapping may produce: a flatten of 256 channels × 64×64 pixels fits


class IndexMappingTooLarge(RuntimeError):
    """A mapping would produce more indices than any one tensor dimension of a CNN holds."""


def _bound_index_mappings() -> None:
    """Stop torch-pruning's index mappings at ``MAX_INDICES``: through a chain of reshapes and permutes
    (torchvision's Swin Transformer at 32×32: window partitions) its flatten mapping multiplies each channel
    index by the pixels again at every step, and one group's lists grew past 24 GiB until the OS killed the
    push. The error ends that group's mapping like any other mapping failure (``all_groups``): it stays unpruned
    and the stage table names it. The classes are patched, not a graph's instances: torch-pruning makes new
    mapping objects each time it forms a group. Done once per process; a mapping within the bound is unchanged."""
    try:
        from torch_pruning.dependency import index_mapping as mapping
    except ImportError:
        return
    for name, kind in list(vars(mapping).items()):
        call = vars(kind).get("__call__") if isinstance(kind, type) and name.endswith("IndexMapping") else None
        if call is not None and not getattr(call, "edgekit_bounded", False):
            kind.__call__ = _bounded(call)


def _bounded(call: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: Any, indices: Any) -> Any:
        # a flatten multiplies by its stride: refused before the list is made, not after
        growth = 1 if getattr(self, "reverse", True) else int(getattr(self, "_stride", 1) or 1)
        if len(indices) * growth > MAX_INDICES:
            raise IndexMappingTooLarge(f"its channel indices grow past {MAX_INDICES} through reshapes")
        mapped = call(self, indices)
        if len(mapped) > MAX_INDICES:
            raise IndexMappingTooLarge(f"its channel indices grow past {MAX_INDICES} through reshapes")
        return mapped

    run.edgekit_bounded = True  # type: ignore[attr-defined]
    return run


def _tolerate_index_mapping_failures() -> None:
    """Make torch-pruning's per-op index-mapping updates record a failing op in ``_UNMAPPED`` instead of
    aborting the whole graph (torch-pruning ≥ 1.5 keeps them in one module).
    Done once per process: the wrappers change nothing for an op whose mapping works."""
    try:
        from torch_pruning.dependency import index_mapping as mapping
    except ImportError:
        return
    for name, update in list(vars(mapping).items()):
        if (name.startswith("update_") and name.endswith("_index_mapping") and name != "update_index_mapping"
                and not getattr(update, "edgekit_tolerant", False)):
            setattr(mapping, name, _tolerant(update))


def _tolerant(update: Callable[..., Any]) -> Callable[..., Any]:
    def run(graph: Any, node: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return update(graph, node, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - recorded per op; the groups through it stay unpruned
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:80]}"
            _UNMAPPED.setdefault(graph, {})[node] = reason
            return None

    run.edgekit_tolerant = True  # type: ignore[attr-defined]
    return run


def all_groups(graph: tp.DependencyGraph, ignored: list[nn.Module]) -> Iterator[Any]:
    """torch-pruning's groups rooted at each Conv2d/Linear (as ``get_all_groups``), except that a root whose
    group torch-pruning fails to map is recorded in ``_UNMAPPED`` (under the root layer) and skipped."""
    visited: set[nn.Module] = set()
    ignored = [*ignored, *graph.IGNORED_LAYERS_IN_TRACING]
    for module in list(graph.module2node):
        if module in ignored or module in visited or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        pruner = graph.get_pruner_of_module(module)
        width = pruner.get_out_channels(module) if pruner is not None else None
        if width is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except Exception as exc:  # noqa: BLE001 - torch-pruning's index mappings fail on some concat/split layouts
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:80]}"
            _UNMAPPED.setdefault(graph, {})[graph.module2node[module]] = reason
            continue
        members = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
        visited.update(members)
        if not any(member in ignored for member in members):
            yield group


def unmapped_groups(graph: tp.DependencyGraph, model: nn.Module, protect: Iterable[str]) -> dict[str, str]:
    """Layers whose channels torch-pruning could not map (through an op, or as a group's root): name → why."""
    names = {module: name for name, module in model.named_modules()}
    groups = prune_groups(graph, model, protect)  # maps every group once, so failing roots are recorded too
    failed = _UNMAPPED.get(graph) or {}
    found = {names[node.module]: f"torch-pruning cannot map its channels ({reason})"
             for node, reason in failed.items() if node.module in names}
    for group in groups:
        for dep, _ in group.group:
            node = next((n for n in (dep.source, dep.target) if n in failed), None)
            if node is not None:
                op = str(getattr(node.type, "name", node.type)).lower()
                found[group.name] = f"its channels pass through a {op} torch-pruning cannot map ({failed[node]})"
                break
    return found


def _channel_groups(group: Any) -> int:
    counts = [1]
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups != module.out_channels:
            counts.append(module.groups)
        if isinstance(module, nn.GroupNorm):
            counts.append(module.num_groups)
    return max(counts)


def feeds_part_of_grouped_conv(group: Any, graph: tp.DependencyGraph, width: int) -> bool:
    """True when the group reaches a grouped conv's inputs through a concatenation (covering only part).

    torch-pruning prunes a grouped conv's input channels as if the removed indices repeated in every
    conv group; a concat branch covers only some groups, so pruning it would unbalance the groups and
    corrupt the weights. Such groups are left at full width.
    """
    for dep, _ in group:
        module = dep.target.module
        if (isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups != module.out_channels
                and graph.is_in_channel_pruning_fn(dep.handler) and module.in_channels != width):
            return True
    return False


def prune_groups(graph: tp.DependencyGraph, model: nn.Module, protect: Iterable[str]) -> list[PruneGroup]:
    """Prunable groups rooted at a Conv/Linear; a group touching a protected layer's outputs is left whole."""
    names = dict(model.named_modules())
    ignored = []
    for name in protect:
        if name not in names:
            raise ConfigError(f"prune.protect: the model has no layer {name!r}")
        ignored.append(names[name])
    module_names = {module: name for name, module in names.items()}
    groups = []
    for group in all_groups(graph, ignored):
        root = group[0][0].target.module
        width = graph.get_pruner_of_module(root).get_out_channels(root)
        if feeds_part_of_grouped_conv(group, graph, width):
            continue
        groups.append(PruneGroup(module_names[root], group, root, width, _channel_groups(group)))
    return groups


def importance(method: str, norm: int) -> tp.importance.Importance:
    if method == "magnitude":
        return tp.importance.MagnitudeImportance(p=norm)
    if method == "bn_scale":
        return tp.importance.BNScaleImportance()
    if method == "taylor":
        return tp.importance.TaylorImportance()
    raise ConfigError(f"prune.method {method!r}: choose magnitude, bn_scale or taylor")


def channel_scores(scorer: tp.importance.Importance, group: PruneGroup) -> torch.Tensor:
    """One score per channel of a conv-group (averaged over channel groups, as they prune together)."""
    score = scorer(group.group)
    if score is None:
        raise ConfigError(f"no importance for layer {group.name}: the method needs parameters it does not have "
                          "(bn_scale needs BatchNorm after the layer)")
    return score.view(group.ch_groups, -1).mean(0) if group.ch_groups > 1 else score


def cut_for(graph: tp.DependencyGraph, group: PruneGroup, score: torch.Tensor, kept: int) -> Cut | None:
    """The lowest-scoring channels to remove so that ``kept`` remain (indices repeated per channel group)."""
    per_group = group.width // group.ch_groups
    drop = per_group - kept // group.ch_groups
    if drop <= 0:
        return None
    lowest = torch.argsort(score)[:drop].tolist()
    idxs = sorted(i + g * per_group for g in range(group.ch_groups) for i in lowest)
    return group.root, graph.get_pruner_of_module(group.root).prune_out_channels, idxs


def prune_to(graph: tp.DependencyGraph, group: PruneGroup, score: torch.Tensor, kept: int) -> None:
    """Remove the lowest-scoring channels so that ``kept`` remain."""
    cut = cut_for(graph, group, score, kept)
    if cut is None:
        return
    pruning = graph.get_pruning_group(*cut)
    if not graph.check_pruning_group(pruning):
        raise ConfigError(f"pruning {group.name} to {kept} channels would leave a layer of its group empty; set "
                          f"prune.protect = [{group.name!r}] or lower prune.ratio")
    pruning.prune()


def prune_copy(model: nn.Module, example: torch.Tensor, protect: Iterable[str], widths: dict[str, int],
               scores: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with each group named in ``widths`` cut to it in one shot (its lowest-``scores``
    channels removed), the rest untouched: a point of the latency search tried on its own."""
    import copy

    net = copy.deepcopy(model).eval()
    graph = build_graph(net, example)
    for group in prune_groups(graph, net, protect):
        if group.name in widths and group.name in scores:
            prune_to(graph, group, scores[group.name], widths[group.name])
    return net


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, float]:
    """MACs of every Conv2d/Linear at ``example``'s size, from one forward pass."""
    macs: dict[nn.Module, float] = {}

    def record(module: nn.Module, _: Any, output: torch.Tensor) -> None:
        spatial = output.shape[2] * output.shape[3] if output.dim() == 4 else 1
        macs[module] = float(module.weight[0].numel() * module.weight.shape[0] * spatial)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return macs


def channel_cost(group: PruneGroup, graph: tp.DependencyGraph, macs: dict[nn.Module, float]) -> float:
    """MACs one channel of the group accounts for: its row in every layer it is an output of, its
    column in every layer it feeds (a depthwise conv counts once)."""
    seen: set[nn.Module] = set()
    cost = 0.0
    for dep, _ in group.group:
        module = dep.target.module
        if module not in macs or module in seen:
            continue
        seen.add(module)
        outputs = module.weight.shape[0]
        depthwise = isinstance(module, nn.Conv2d) and 1 < module.groups == outputs
        if depthwise or graph.is_out_channel_pruning_fn(dep.handler):
            cost += macs[module] / outputs
        elif graph.is_in_channel_pruning_fn(dep.handler):
            inputs = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
            cost += macs[module] / inputs
    return cost


def history(graph: tp.DependencyGraph) -> list[list]:
    """torch-pruning's history as plain JSON data (names, direction, integer indices)."""
    plain = []
    for name, is_out, idxs in graph.pruning_history():
        plain.append([name, bool(is_out), [int(getattr(i, "idx", i)) for i in idxs]])
    return plain


def apply_history(model: nn.Module, recorded: list[list], in_channels: int, size: int = 32) -> nn.Module:
    """Replay a saved history on a freshly built model, so a pruned checkpoint loads with weights_only."""
    graph = build_graph(model.eval(), torch.zeros(1, in_channels, size, size))
    graph.load_pruning_history([[name, is_out, list(idxs)] for name, is_out, idxs in recorded])
    return model


def widths(model: nn.Module) -> dict[str, int]:
    return {name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def misaligned(before: dict[str, int], after: dict[str, int], round_to: int) -> list[str]:
    """Layers whose width changed but is not a multiple of ``round_to``."""
    return [f"{name}: {after[name]}" for name in after
            if after[name] != before.get(name) and after[name] % round_to]


# -- the driver: prune → fine-tune, step by step ----------------------------------------------
class PruneSpec(PruneSection):
    """What ``prune_model`` works to: deploy.toml's ``[prune]`` (its keys, defaults and checks) plus the model's
    classifier output (``model.output``, and ``model.num_classes`` when its shape is to be checked)."""

    output: OutputKey = 0
    num_classes: int | None = None


@dataclass
class PruneStep:
    step: int
    channels: int
    epochs: int
    validation_top1: float
    state: dict[str, torch.Tensor]
    history: list[list]
    protected: dict[str, str] = field(default_factory=dict)


Fit = Callable[[nn.Module, int, Any, Any], tuple[int, float]]
WidthsFor = Callable[[dict[str, torch.Tensor], dict[str, int]], dict[str, int]]


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float, output: OutputKey = 0):
    """Hinton et al.: (1-α)·CE + α·T²·KL(student/T ‖ teacher/T), teacher run on the same batch."""
    criterion = nn.CrossEntropyLoss()

    def loss(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = torch.softmax(select(teacher(inputs), output) / temperature, dim=1)
        kl = nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
        return (1 - alpha) * criterion(logits, labels) + alpha * temperature ** 2 * kl

    return loss


def sparsify_bn(model: nn.Module, strength: float) -> Callable[[], None]:
    """Network slimming (Liu et al. 2017): add λ·sign(γ) to every BatchNorm scale's gradient."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not norms:
        raise ConfigError("prune.method = \"bn_scale\" needs BatchNorm layers; the model has none")

    def hook() -> None:
        for norm in norms:
            if norm.weight.grad is not None:
                norm.weight.grad.add_(strength * torch.sign(norm.weight.data))

    return hook


def accumulate_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], limit: int = 8,
                         output: OutputKey = 0, device: torch.device | None = None):
    """Taylor importance reads weight×gradient: accumulate the loss gradient over a few batches."""
    model.zero_grad(set_to_none=True)
    criterion = nn.CrossEntropyLoss()
    for index, (inputs, labels) in enumerate(batches):
        if index >= limit:
            break
        if device is not None:
            inputs, labels = inputs.to(device), labels.to(device)
        criterion(select(model(inputs), output), labels).backward()


def prune_model(model: nn.Module, spec: PruneSpec, example: torch.Tensor, train_batches: Callable[[int], Iterable],
                fit: Fit, say: Say, batch: torch.Tensor | None = None,
                widths_for: WidthsFor | None = None) -> list[PruneStep]:
    """Prune ``model`` in place over ``spec.steps`` steps.

    ``widths_for(scores, widths)`` (a latency target: ``latency.search_widths``) chooses every group's final
    width from the first step's channel scores; the steps then go there in a straight line, as by ratio.

    ``fit(model, step, loss_fn, after_backward)`` trains (step 0: sparsity training; then fine-tuning,
    which stops early once the accuracy budget is met) and returns (epochs run, validation top-1).
    ``batch`` (real images; ``example`` when absent) is run after every step and by the probe that
    finds layers torch-pruning cannot follow. The layers producing the model's outputs are found from
    the graph and never pruned. Each step keeps a copy of its weights and history.
    """
    check_trainable(model)
    if not 0 < spec.ratio < 1:
        raise ConfigError(f"prune.ratio {spec.ratio} must be between 0 and 1 (it is the fraction of channels removed)")
    batch = example if batch is None else batch
    reference = shapes_of(model, batch, spec)
    teacher = None
    if spec.distill:
        import copy

        teacher = copy.deepcopy(model).eval()
    if spec.method == "bn_scale" and spec.sparsity_epochs:
        say(f"sparsity training of BatchNorm scales for {spec.sparsity_epochs} epoch(s) (λ={spec.sparsity_lambda})")
        fit(model, 0, None, sparsify_bn(model, spec.sparsity_lambda))
    graph, protect, auto, groups = prunable(model, spec, example, batch, say)
    before = widths(model)
    original = {g.name: g.width for g in groups}
    ch_groups = {g.name: g.ch_groups for g in groups}
    costs = {}
    if spec.cost_weight:
        macs = layer_macs(model, example)
        costs = {g.name: channel_cost(g, graph, macs) for g in groups}
    ratios = cost_weighted_ratios(original, costs, spec.ratio, spec.cost_weight, spec.max_layer_ratio)
    scorer = importance(spec.method, spec.norm)
    steps = []
    for step in range(1, spec.steps + 1):
        if spec.method == "taylor":
            accumulate_gradients(model, train_batches(step), output=spec.output, device=example.device)
        groups = prune_groups(graph, model, protect)
        scores = score_groups(scorer, [g for g in groups if g.name in original], protect, say)
        groups = [g for g in groups if g.name in scores]
        current = {g.name: g.width for g in groups}
        active = {name: original[name] for name in current}  # groups left unscored drop out here
        if widths_for is not None and step == 1:
            final = widths_for(scores, active)
            ratios = {name: 1 - final.get(name, width) / width for name, width in active.items()}
        if spec.scope == "global" and widths_for is None:
            kept = kept_widths_global(scores, active, current, spec.ratio, step, spec.steps, spec.round_to, ch_groups)
        else:
            kept = kept_widths_uniform(active, current, ratios, step, spec.steps, spec.round_to, ch_groups)
        kept = cap_widths(kept, active, spec.max_layer_ratio, spec.round_to, ch_groups)
        for group in groups:
            prune_to(graph, group, scores[group.name], kept[group.name])
        model.zero_grad(set_to_none=True)
        check_still_runs(model, batch, reference, [g.name for g in groups if kept[g.name] < current[g.name]], spec)
        bad = misaligned(before, widths(model), spec.round_to)
        if bad:
            raise ConfigError(f"pruned widths are not multiples of {spec.round_to}: {', '.join(bad[:5])}")
        loss = (distillation_loss(teacher, spec.distill_temperature, spec.distill_alpha, spec.output)
                if teacher else None)
        say(f"step {step}/{spec.steps}: pruned to {sum(kept.values())} of {sum(original.values())} channels; "
            "fine-tuning" + (" with distillation" if teacher else ""))
        epochs, validation = fit(model, step, loss, None)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        steps.append(PruneStep(step, sum(kept.values()), epochs, validation, state, history(graph), dict(auto)))
    return steps


def prunable(model: nn.Module, spec: PruneSpec, example: torch.Tensor, batch: torch.Tensor,
             say: Say) -> tuple[tp.DependencyGraph, list[str], dict[str, str], list[PruneGroup]]:
    """The dependency graph, what stays whole (protected, outputs, what the probe cannot follow, with why)
    and the groups left to prune: what pruning by ratio and the latency model's plan both start from."""
    protect = list(dict.fromkeys([*spec.protect, *output_layers(model.eval(), example)]))
    build = lambda net: build_graph(net.eval(), example)  # noqa: E731
    graph = build(model)  # built once: tracing a 120-layer DenseNet costs seconds per build
    auto = {name: reason for name, reason in channel_mixers(model.eval(), example).items() if name not in protect}
    pair = batch[:2] if len(batch) > 1 else batch.repeat(2, 1, 1, 1)  # train-mode BatchNorm needs two images
    auto.update({name: reason for name, reason in train_only_feeders(model, pair).items() if name not in protect})
    say("pruning probe: checking which layer groups torch-pruning can follow (on a copy, with real images)")
    auto.update(unmapped_groups(graph, model, protect + list(auto)))
    auto.update(unfollowable(model, batch, protect + list(auto), spec, build, graph, say))
    if auto:
        say(f"left {len(auto)} layer group(s) unpruned that torch-pruning cannot follow: "
            + "; ".join(f"{name} ({reason})" for name, reason in list(auto.items())[:4]))
    protect += list(auto)
    groups = prune_groups(graph, model, protect)
    if not groups:
        why = f" (e.g. {next(iter(auto))}: {next(iter(auto.values()))})" if auto else ""
        raise ConfigError("nothing left to prune: every layer is protected, produces an output or cannot be "
                          f"followed by torch-pruning{why}; disable pruning (prune.enabled = false)")
    return graph, protect, auto, groups


def train_only_feeders(model: nn.Module, batch: torch.Tensor) -> dict[str, str]:
    """The layers feeding modules that run only in train mode (GoogLeNet's and Inception's auxiliary heads),
    with why they stay whole: the graph is traced in eval mode, where those modules do not run, so pruning
    these layers would leave the heads expecting the old channel count and fine-tuning would fail."""
    ran: set[str] = set()
    hooks = [m.register_forward_hook(lambda *_, n=name: ran.add(n)) for name, m in model.named_modules()]
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for hook in hooks:
            hook.remove()
    net = copy.deepcopy(model).train()  # a copy: a train-mode pass moves BatchNorm statistics
    producers: dict[Any, str] = {}
    inputs: dict[str, Any] = {}

    def record(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_: nn.Module, args: Any, output: Any) -> None:
            if isinstance(module, (nn.Conv2d, nn.Linear)) and getattr(output, "grad_fn", None) is not None:
                producers[output.grad_fn] = name
            if name not in ran and args and getattr(args[0], "grad_fn", None) is not None:
                inputs.setdefault(name, args[0].grad_fn)
        return hook

    hooks = [m.register_forward_hook(record(name, m)) for name, m in net.named_modules() if name]
    try:
        with torch.enable_grad():
            net(batch)
    except Exception:  # noqa: BLE001 - a model failing in train mode fails its fine-tuning, with its own line
        return {}
    finally:
        for hook in hooks:
            hook.remove()
    heads = [name for name in inputs if not any(name.startswith(other + ".") for other in inputs)]
    return {layer: f"feeds {head}, which runs only in training (an auxiliary head), so its channels stay"
            for head in heads for layer in nearest_producers([inputs[head]], producers)}


def score_groups(scorer: tp.importance.Importance, groups: list[PruneGroup], protect: list[str],
                 say: Say) -> dict[str, torch.Tensor]:
    """Channel scores per group; a group torch-pruning cannot score is left unpruned (and protected)."""
    scores = {}
    for group in groups:
        try:
            scores[group.name] = channel_scores(scorer, group)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch-pruning's importance fails on unmapped indices
            protect.append(group.name)
            say(f"left {group.name} unpruned: torch-pruning cannot score it ({type(exc).__name__}: "
                f"{(str(exc).strip().splitlines() or [''])[0][:100]})")
    return scores


def shapes_of(model: nn.Module, batch: torch.Tensor, spec: PruneSpec) -> list[tuple[str, list[int]]]:
    """The model's output shapes on ``batch``; the classifier's must be [batch, num_classes]."""
    with torch.no_grad():
        result = model.eval()(batch)
    if spec.num_classes is not None:
        check_classifier(result, spec.output, spec.num_classes)
    return [(name, list(tensor.shape)) for name, tensor in named_outputs(result)]


def check_still_runs(model: nn.Module, batch: torch.Tensor, reference: list[tuple[str, list[int]]],
                     pruned: list[str], spec: PruneSpec) -> None:
    """A forward pass on real images after a pruning step: same outputs, same shapes, else one line."""
    suggestion = f"prune.protect = {pruned[:6]!r}" if pruned else "prune.enabled = false"
    try:
        after = shapes_of(model, batch, spec)
    except ConfigError as exc:
        raise ConfigError(f"after pruning, {exc}; add the layers feeding it to {suggestion}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's forward raises
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(f"the pruned model no longer runs ({type(exc).__name__}: {first}); the layers just pruned "
                          f"were {', '.join(pruned[:6]) or 'none'}: set {suggestion}") from None
    if after != reference:
        raise ConfigError(f"pruning changed the model's output shapes from {reference} to {after}; set {suggestion}")


def unfollowable(model: nn.Module, batch: torch.Tensor, protect: list[str], spec: PruneSpec,
                 build: Callable[[nn.Module], tp.DependencyGraph], graph: tp.DependencyGraph,
                 say: Say | None = None) -> dict[str, str]:
    """Groups whose pruning breaks the model or changes its function, found on a copy (prune_probe);
    ``graph`` is the model's own (its groups are the candidates), ``build`` makes one for each copy."""
    generator = torch.Generator().manual_seed(0)

    def plan(net: nn.Module, graph: tp.DependencyGraph, names: list[str]) -> list[Cut]:
        cuts = []
        for group in prune_groups(graph, net, protect):
            if group.name not in names:
                continue
            score = torch.rand(group.width // group.ch_groups, generator=generator).to(batch.device)
            kept = aligned_width(group.width * (1 - spec.ratio), group.width, spec.round_to, group.ch_groups)
            cut = cut_for(graph, group, score, kept)
            if cut is not None:
                cuts.append(cut)
        return cuts

    found: dict[str, str] = {}
    names = [g.name for g in prune_groups(graph, model, protect)]
    for _ in range(3):  # culprits found one by one; a pair that only fails together shows up next round
        more, whole = culprits(model, batch, [n for n in names if n not in found], plan, build, say=say)
        found.update(more)
        if whole.ok:
            return found
        if not more:
            break
    raise ConfigError(f"pruning breaks the model ({whole.reason}) and no single layer explains it; "
                      "protect layers with prune.protect = [...] or set prune.enabled = false")
