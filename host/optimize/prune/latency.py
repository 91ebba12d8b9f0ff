"""A per-device latency model of the prunable groups, and the width search that prunes to a latency target.

The model is NetAdapt's layer-wise lookup table: each Conv/Linear layer is timed on the device alone, at every
(input width, output width) pair the grid of its groups allows (``grid``), and a layer between grid points is
interpolated bilinearly. Layers timed one by one carry a per-call overhead a whole model pays once, and miss
what sits between them (adds, pooling); a straight line fitted through a few whole models at known widths
(``WHOLE_LEVELS``, the same widths for every group) maps the layers' sum to whole-model latency.

The search (``search_widths``) is greedy: from full width, repeatedly take one alignment unit off the group
whose cut costs least accuracy (``sensitivity``) per millisecond saved, until the prediction meets the target.
Its costs are measured one group at a time, so ``frontier`` also offers uniform widths, a blend, widths
shaped by each group's latency per channel and widths narrower inside blocks (wider late, or at every depth
alike), all at the same prediction, and the closed loop keeps whichever a short fine-tune (``trial``) says
recovers best.
The pure parts (grid, interpolation, prediction, search) take plain data and are unit-tested; the torch part
(``describe_layers``) reads layers and groups from torch-pruning's dependency graph.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from .sensitivity import Curve, cost_at, unmeasured

LEVELS = (1.0, 0.75, 0.5, 0.25, 0.125)  # fractions of a group's width timed per layer (plus its floor)
WHOLE_LEVELS = (1.0, 0.5, 0.0)  # whole models timed to calibrate the layer sum (0.0: every group at its floor)
BASELINE = "whole:baseline"  # the unpruned model at the report's baseline precision (device/jobs/latency.py)


@dataclass(frozen=True)
class Layer:
    """One Conv/Linear layer: its shape at full width, the groups that set its input and output widths."""

    name: str
    kind: str  # "conv" or "linear"
    cin: int
    cout: int
    in_group: Optional[str]
    out_group: Optional[str]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    depthwise: bool = False
    size: tuple[int, int] = (1, 1)  # input H, W

    def signature(self) -> str:
        """Everything but the widths: layers alike in it share their timings."""
        if self.kind == "linear":
            return "linear"
        conv = "dw" if self.depthwise else f"g{self.groups}"
        return (f"conv:k{self.kernel[0]}x{self.kernel[1]}s{self.stride[0]}x{self.stride[1]}p{self.padding[0]}x"
                f"{self.padding[1]}d{self.dilation[0]}x{self.dilation[1]}{conv}@{self.size[0]}x{self.size[1]}")

    def widths(self, widths: Mapping[str, int]) -> tuple[int, int]:
        cin = widths.get(self.in_group, self.cin) if self.in_group else self.cin
        cout = widths.get(self.out_group, self.cout) if self.out_group else self.cout
        return (cout, cout) if self.depthwise else (cin, cout)


def variant_id(layer: Layer, cin: int, cout: int) -> str:
    return f"{layer.signature()}|{cin}|{cout}"


@dataclass(frozen=True)
class GroupSpace:
    """One prunable group's widths: full, floor (max_layer_ratio), step (alignment unit)."""

    name: str
    width: int
    floor: int
    unit: int


def group_space(name: str, width: int, round_to: int, ch_groups: int, max_layer_ratio: float) -> GroupSpace:
    """The widths the search may give a group: multiples of lcm(round_to, ch_groups), from floor to full."""
    unit = math.lcm(round_to, ch_groups) if round_to > 1 else ch_groups
    if width <= unit:
        return GroupSpace(name, width, width, unit)
    floor = max(unit, int(math.ceil(width * (1 - max_layer_ratio) / unit)) * unit)
    return GroupSpace(name, width, min(floor, width), unit)


def search_spaces(groups: Iterable[Any], round_to: int, max_layer_ratio: float, multiple: int = 1
                  ) -> dict[str, GroupSpace]:
    """Every prunable group's widths, in steps of ``round_to`` and of the device's ``multiple``
    (``runtimes.channel_multiple``: a width between two of its multiples costs the next one's time)."""
    unit = math.lcm(round_to, multiple)
    return {g.name: group_space(g.name, g.width, unit, g.ch_groups, max_layer_ratio) for g in groups}


def aligned(space: GroupSpace, fraction: float) -> int:
    """The allowed width nearest to ``fraction`` of the full width."""
    if space.floor == space.width:
        return space.width
    kept = int(math.floor(space.width * fraction / space.unit + 0.5)) * space.unit
    return max(space.floor, min(space.width, kept))


def grid(space: Optional[GroupSpace], full: int) -> list[int]:
    """The widths timed for a layer side set by ``space`` (a side no group sets keeps ``full``)."""
    if space is None:
        return [full]
    return sorted({aligned(space, f) for f in LEVELS} | {space.floor, space.width})


def layer_variants(layers: Iterable[Layer], spaces: Mapping[str, GroupSpace]) -> dict[str, tuple[Layer, int, int]]:
    """Every (layer shape, cin, cout) to time, deduplicated across layers alike."""
    variants = {}
    for layer in layers:
        ins = grid(spaces.get(layer.in_group or ""), layer.cin)
        outs = grid(spaces.get(layer.out_group or ""), layer.cout)
        for cout in outs:
            for cin in ([cout] if layer.depthwise else ins):
                variants.setdefault(variant_id(layer, cin, cout), (layer, cin, cout))
    return variants


def whole_widths(spaces: Mapping[str, GroupSpace]) -> dict[str, dict[str, int]]:
    """The whole-model variants that calibrate the layer sum: every group at the same fraction."""
    return {f"whole:{level}": {name: aligned(space, level) if level else space.floor for name, space in spaces.items()}
            for level in WHOLE_LEVELS}


def graph_hash(layers: Iterable[Layer], spaces: Mapping[str, GroupSpace]) -> str:
    """What the latency table depends on in the model: its layers' shapes and the widths searched (not weights)."""
    payload = {"layers": [asdict(layer) for layer in layers], "spaces": [asdict(s) for s in spaces.values()],
               "levels": [LEVELS, WHOLE_LEVELS]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# -- prediction ------------------------------------------------------------------------------------
def _between(points: list[int], value: float) -> tuple[int, int, float]:
    """The grid points around ``value`` and its weight towards the upper one."""
    if value <= points[0]:
        return points[0], points[0], 0.0
    for low, high in zip(points, points[1:]):
        if value <= high:
            return low, high, (value - low) / (high - low)
    return points[-1], points[-1], 0.0


def monotone(table: Mapping[str, float]) -> dict[str, float]:
    """The layer variants' times made non-decreasing in both widths, per layer shape: the mean of the largest
    time at or below each point and the smallest at or above it (a cheap isotonic fit). Time cannot fall as a
    layer widens (a width between a runtime's vectors costs the next one's, a step, still never a fall), but a
    layer of tens of microseconds timed alone on a busy machine reads its noise: RegNetY-400MF's SE layer read
    0.065 ms at 16 output channels and 0.040 at 26, and the greedy search, which looks for the cheapest widths,
    found exactly such points, predicting 0.29 ms for widths measured at 0.51, below every group at its floor
    (0.37). Whole-model entries are left as measured."""
    shapes: dict[str, list[tuple[int, int, str]]] = {}
    for key in table:
        if "|" in key:
            signature, cin, cout = key.rsplit("|", 2)
            shapes.setdefault(signature, []).append((int(cin), int(cout), key))
    fitted = dict(table)
    for points in shapes.values():
        for cin, cout, key in points:
            below = max(table[k] for i, o, k in points if i <= cin and o <= cout)
            above = min(table[k] for i, o, k in points if i >= cin and o >= cout)
            fitted[key] = (below + above) / 2
    return fitted


class LatencyModel:
    """Predicted whole-model latency (ms) for any widths of the groups, from the device's table."""

    def __init__(self, layers: list[Layer], spaces: Mapping[str, GroupSpace], table: Mapping[str, float],
                 checks: Iterable[Check] = (), fit: bool = True) -> None:
        """``fit``: the layer variants fitted ``monotone`` (False: as the device read them, for comparison)."""
        self.layers, self.spaces, self.table = layers, dict(spaces), monotone(table) if fit else dict(table)
        self.grids = {layer.name: (grid(self.spaces.get(layer.in_group or ""), layer.cin),
                                   grid(self.spaces.get(layer.out_group or ""), layer.cout)) for layer in layers}
        points = [(self.layer_sum(widths), self.table[name]) for name, widths in whole_widths(self.spaces).items()
                  if name in self.table]
        self.offset, self.scale = fit_line(points)
        self.checks = list(checks)
        self.anchors = sorted((self.uncorrected(c.widths), c.measured_ms) for c in self.checks)

    def layer_ms(self, layer: Layer, widths: Mapping[str, int]) -> float:
        cin, cout = layer.widths(widths)
        ins, outs = self.grids[layer.name]
        o0, o1, wo = _between(outs, cout)
        if layer.depthwise:
            return (1 - wo) * self.table[variant_id(layer, o0, o0)] + wo * self.table[variant_id(layer, o1, o1)]
        i0, i1, wi = _between(ins, cin)
        value = 0.0
        for o, fo in ((o0, 1 - wo), (o1, wo)):
            for i, fi in ((i0, 1 - wi), (i1, wi)):
                if fo * fi:
                    value += fo * fi * self.table[variant_id(layer, i, o)]
        return value

    def layer_sum(self, widths: Mapping[str, int]) -> float:
        return sum(self.layer_ms(layer, widths) for layer in self.layers)

    def uncorrected(self, widths: Mapping[str, int]) -> float:
        """The table's prediction: the layers' sum through the whole-model line."""
        return self.offset + self.scale * self.layer_sum(widths)

    def predict(self, widths: Mapping[str, int]) -> float:
        """The table's prediction, corrected by the whole models measured at chosen widths (``correction``)."""
        base = self.uncorrected(widths)
        return base * correction(base, self.anchors)

    def with_checks(self, checks: Iterable[Check]) -> "LatencyModel":
        return LatencyModel(self.layers, self.spaces, self.table, checks, fit=False)  # the table is as fitted already

    def full(self) -> dict[str, int]:
        return {name: space.width for name, space in self.spaces.items()}


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``measured = offset + scale × layer sum``; a fit that noise made meaningless (a
    non-positive scale) falls back to scale 1 and the mean difference."""
    if not points:
        return 0.0, 1.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    scale = sum((x - mx) * (y - my) for x, y in points) / spread if spread > 0 else 0.0
    if scale <= 0:
        return my - mx, 1.0
    return my - scale * mx, scale


def load_model_file(path: Path) -> tuple[LatencyModel, dict[str, Any]]:
    """A saved latency model as the predictor (corrected by the whole models checked on the device), with what
    the file says about where it was measured."""
    saved = json.loads(Path(path).read_text())
    layers = [Layer(**{k: tuple(v) if isinstance(v, list) else v for k, v in layer.items()})
              for layer in saved["layers"]]
    spaces = {s["name"]: GroupSpace(**s) for s in saved["spaces"]}
    checks = [Check(dict(c["widths"]), float(c["measured_ms"])) for c in saved.get("checks", [])]
    return LatencyModel(layers, spaces, saved["table"], checks), saved


# -- the closed loop: the chosen widths measured whole on the device, and the model corrected ----------------
CHECK_ROUNDS = 4  # whole-model measurements per target: a multiplicative correction converges like a secant step
# (the first measurement fixes the table's scale near the target, the second its slope, the third confirms), and each
# round is an engine build on the device (seconds on a CPU runtime, minutes for TensorRT). The fourth is for a check
# won by another runtime than the table's (a narrow model 3x faster there): the correction measured at narrow widths
# overshoots wide ones, and three rounds stopped torchvision's ResNet-18 at a third of its target
CHECK_OVER = 0.05  # measured this far above the target: search again (the agent's budget allows TARGET_SLACK)
CHECK_OFF = 0.10  # prediction this far off the measurement: search again (the widths may be pruned too far)
TARGET_SLACK = 0.15  # the promise and the agent's budget: the median at most 15 % above the target


@dataclass(frozen=True)
class Check:
    """A whole model at chosen widths, timed on the device as the table's whole models are."""

    widths: dict[str, int]
    measured_ms: float


Trial = Callable[[list[dict[str, int]], list[str]], int]  # fine-tunes candidate widths (and their names) briefly,
# returns the best one's index


def correction(base_ms: float, anchors: list[tuple[float, float]]) -> float:
    """measured / predicted at the checked widths, interpolated over the table's prediction between them and held
    beyond them: exact at every measured point, local to the range the search is choosing in (the table's error
    is not one constant: a narrow model is more overhead-bound than a wide one), and 1 with nothing measured."""
    if not anchors:
        return 1.0
    ratios = [(base, measured / base if base > 0 else 1.0) for base, measured in anchors]
    if base_ms <= ratios[0][0]:
        return ratios[0][1]
    for (b0, r0), (b1, r1) in zip(ratios, ratios[1:]):
        if base_ms <= b1:
            return r0 + (r1 - r0) * ((base_ms - b0) / (b1 - b0) if b1 > b0 else 1.0)
    return ratios[-1][1]


def search_again(target_ms: float, predicted_ms: float, measured_ms: float) -> bool:
    """The widths measured over the target by more than CHECK_OVER, or a prediction off by more than CHECK_OFF
    (also below: the widths would lose accuracy for time the target does not ask for)."""
    return measured_ms > target_ms * (1 + CHECK_OVER) or abs(predicted_ms - measured_ms) > CHECK_OFF * measured_ms


@dataclass
class Round:
    """One check: the widths searched, their prediction before the measurement, the measurement."""

    index: int
    widths: dict[str, int]
    predicted_ms: float
    measured_ms: float
    again: bool  # the search runs again after it
    blend: float = 1.0  # the search's widths (1) and uniform ones (0) mixed in this proportion, or a shape's


@dataclass
class Loop:
    """The closed loop's answer: the widths to prune to, as measured; ``met``: within TARGET_SLACK."""

    target_ms: float
    widths: dict[str, int]
    predicted_ms: float
    measured_ms: float
    met: bool
    rounds: list[Round]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def closed_loop(model: LatencyModel, costs: Mapping[str, Curve], target_ms: float,
                measure: Callable[[dict[str, int]], float], on_round: Callable[[Round], None],
                rounds: int = CHECK_ROUNDS, trial: Optional[Trial] = None) -> tuple[Loop, list[Check]]:
    """Search, measure the widths found as a whole model (``measure``: the device), and while the measurement
    says so (``search_again``) add it to the model's checks and search again: at most ``rounds`` measurements.
    Widths measured already are not measured twice. Returns the answer and every check (old and new).

    With a ``trial`` the first round's candidates (``frontier``: the search's widths, uniform ones and blends,
    all at the same prediction) are fine-tuned briefly and the blend that recovers best is kept for every round:
    the accuracy costs are measured one group at a time and cannot see what cutting several groups together
    does (a residual block alone is redundant, all of them are not)."""
    checks = list(model.checks)
    done: list[Round] = []
    blend = None if trial is not None else 1.0
    for index in range(1, rounds + 1):
        corrected = model.with_checks(checks)
        if blend is None and trial is not None:
            blend = trial_blend(corrected, costs, target_ms, trial)
        found = blended(corrected, costs, target_ms, 1.0 if blend is None else blend)
        known = next((c.measured_ms for c in checks if c.widths == found.widths), None)
        measured = known if known is not None else measure(found.widths)
        if known is None:
            checks.append(Check(dict(found.widths), measured))
        again = search_again(target_ms, found.predicted_ms, measured) and index < rounds and known is None
        done.append(Round(index, dict(found.widths), found.predicted_ms, measured, again,
                          1.0 if blend is None else blend))
        on_round(done[-1])
        if not again:
            break
    best = pick_round(done, target_ms)
    return Loop(target_ms, best.widths, best.predicted_ms, best.measured_ms,
                best.measured_ms <= target_ms * (1 + TARGET_SLACK), done), checks


def kept_blend(loop: Mapping[str, Any]) -> float:
    """The blend of the round a loop (``Loop.to_json()``) ships: a trial that waited for a corrected model
    leaves the search's widths in the rounds before it."""
    rounds = loop["rounds"]
    return next((r for r in reversed(rounds) if r["widths"] == loop["widths"]), rounds[-1]).get("blend", 1.0)


def trial_blend(model: LatencyModel, costs: Mapping[str, Curve], target_ms: float, trial: Trial
                ) -> Optional[float]:
    """The blend whose widths the trial prefers among ``frontier``'s (1, the search's own, when they are all).
    None while the model says the target is out of reach: every candidate is then the same floor, and a table
    timed while the device ran slower says so of targets the device meets (measured 2.6 ms for a predicted
    5.6 ms floor); the next round's corrected model offers the candidates again. The candidate holding
    uniform widths is named "uniform" even when ``frontier`` found them first under another blend (the
    search's own widths can be uniform), so the trial's guard (``trial.choose``) always knows its default."""
    options = frontier(model, costs, target_ms)
    if len(options) < 2:
        return 1.0 if options[1.0].reached else None
    uniform = blended(model, costs, target_ms, 0.0).widths  # named so wherever it falls: the trial's default
    names = ["uniform" if found.widths == uniform else blend_name(b) for b, found in options.items()]
    return list(options)[trial([found.widths for found in options.values()], names)]


def blend_name(blend: float) -> str:
    """A trial candidate in words, as the trial's line and the stage table name it."""
    return {1.0: "search", 0.5: "halfway", 0.0: "uniform", **SHAPES}.get(blend, f"blend {blend:g}")


def blended(model: LatencyModel, costs: Mapping[str, Curve], target_ms: float, blend: float) -> Search:
    """The widths of one blend at ``target_ms`` (1: the greedy search's)."""
    return search_widths(model, costs, target_ms) if blend == 1.0 else frontier(model, costs, target_ms,
                                                                               (blend,))[blend]


def pick_round(done: list[Round], target_ms: float) -> Round:
    """The widths to ship: the least pruned measured within CHECK_OVER of the target (most accuracy kept), else
    the closest measured within TARGET_SLACK, else the fastest measured (the closest miss, for the verdict)."""
    close = [r for r in done if r.measured_ms <= target_ms * (1 + CHECK_OVER)]
    if close:
        return max(close, key=lambda r: r.measured_ms)
    return min(done, key=lambda r: r.measured_ms)


# -- the search ------------------------------------------------------------------------------------
@dataclass
class Search:
    """The widths chosen, their predicted latency, and whether the target is met (else: the closest).
    ``path`` is every point the greedy walk went through, full width first: where the closest configuration
    within the accuracy budget is looked for when the end of the walk loses too much (``closest_on_path``)."""

    widths: dict[str, int]
    predicted_ms: float
    reached: bool
    steps: int
    path: list[tuple[dict[str, int], float]] = field(default_factory=list)


FLAT = 0.02  # an unreachable target: the last cuts that save under 2 % together are noise on a device, not speed


def search_widths(model: LatencyModel, costs: Mapping[str, Curve], target_ms: float) -> Search:
    """Greedy NetAdapt-style steps: take one unit off the group with the least accuracy cost per millisecond
    saved, until the prediction is at or under ``target_ms`` (or every group is at its floor).

    ``costs`` are each group's accuracy cost by width (``sensitivity``: measured on real images, comparable
    across groups); a group without one costs its channels removed. Ties go to the larger saving.
    """
    widths = model.full()
    current = model.predict(widths)
    path = [(dict(widths), current)]
    steps = 0
    while current > target_ms:
        best: Optional[tuple[float, float, str]] = None
        for name, space in model.spaces.items():
            narrower = widths[name] - space.unit
            if narrower < space.floor:
                continue
            saved = current - model.predict(dict(widths, **{name: narrower}))
            curve = costs.get(name)
            lost = cost_at(curve, space.width, narrower) - cost_at(curve, space.width, widths[name])
            key = (lost / saved if saved > 1e-9 else math.inf, -saved, name)
            if best is None or key < best:
                best = key
        if best is None:
            break
        widths[best[2]] -= model.spaces[best[2]].unit
        current = model.predict(widths)
        path.append((dict(widths), current))
        steps += 1
    if current > target_ms:  # out of reach: keep the channels whose removal bought (almost) no time
        path = path[:next(i for i, (_, ms) in enumerate(path) if ms <= current * (1 + FLAT)) + 1]
        widths, current, steps = dict(path[-1][0]), path[-1][1], len(path) - 1
    return Search(widths, current, current <= target_ms, steps, path)


def closest_on_path(size: int, within: Callable[[int], bool], failing: int, probes: int) -> tuple[int, list[int]]:
    """The furthest point of a greedy path (index 0: full width, which is within the budget by definition)
    still within the accuracy budget, by bisection: ``failing`` is a point known to be outside it (the end of
    the walk, once fine-tuned), ``within(i)`` fine-tunes point ``i`` and judges it. Accuracy falls along the
    path (each point removes channels from the previous one), so at most ``probes`` fine-tunings find the
    boundary to within the path's length / 2**probes; the answer is the furthest point *judged* within, never
    merely the last one tried. Returns that index and the indices probed, in order."""
    if not 0 < failing < size:
        raise ValueError(f"failing point {failing} is not on a path of {size}")
    low, high, tried = 0, failing, []
    while high - low > 1 and len(tried) < probes:
        middle = (low + high) // 2
        tried.append(middle)
        if within(middle):
            low = middle
        else:
            high = middle
    return low, tried


def uniform_widths(model: LatencyModel, target_ms: float) -> Search:
    """Uniform pruning tuned to the same predicted latency: one fraction for every group, by bisection."""
    return scaled(model, {name: 1.0 for name in model.spaces}, target_ms)


def scaled(model: LatencyModel, shape: Mapping[str, float], target_ms: float, tolerance: float = 1e-3,
           held: Iterable[str] = ()) -> Search:
    """The widest widths of one ``shape`` (a fraction per group, its largest 1) that meet ``target_ms``: every
    group at ``s × shape`` of its width, ``s`` found by bisection (the prediction falls as ``s`` does); ``held``
    groups stay whole."""
    whole = set(held)

    def at(s: float) -> dict[str, int]:
        return {name: space.width if name in whole else aligned(space, min(1.0, s * shape.get(name, 1.0)))
                for name, space in model.spaces.items()}

    low, high = 0.0, 1.0 / max(min(shape.values(), default=1.0), 1e-6)
    if model.predict(at(low)) > target_ms:
        widths = at(low)
        return Search(widths, model.predict(widths), False, 0)
    steps = 0
    while high - low > tolerance:  # the widest scale that meets the target is in [low, high]
        middle = (low + high) / 2
        low, high = (middle, high) if model.predict(at(middle)) <= target_ms else (low, middle)
        steps += 1
    widths = at(low)
    predicted = model.predict(widths)
    return Search(widths, predicted, predicted <= target_ms, steps)


BY_CHANNEL_COST = -1.0  # the candidate shaped by each group's latency per channel (``channel_cost_shape``)
LEAN_INSIDE = -3.0  # the candidate narrower inside blocks (``depth_shape``); -2.0 was "late wide, lean inside"
BLENDS = (1.0, 0.5, 0.0, BY_CHANNEL_COST, LEAN_INSIDE)  # the search's, halfway, uniform, shapes
SHAPES = {BY_CHANNEL_COST: "by channel cost", LEAN_INSIDE: "lean inside"}
COST_SHAPE_POWER = 0.5  # kept fraction ∝ (cheapest channel's cost / this group's) ** this
EXPANSION_RATIO = 0.5  # and an expansion keeps half a stream's share


def channel_cost_shape(model: LatencyModel, power: float = COST_SHAPE_POWER) -> dict[str, float]:
    """A kept fraction per group (the largest 1) that keeps more of the channels that cost least time: each
    group's latency per channel, predicted when it alone is cut to half, ranked against the cheapest group's.
    It uses the device's table only, none of the one-group-at-a-time accuracy costs, so it is a candidate
    those costs cannot mislead (a CIFAR ResNet's 8×8 stage-3 channels cost a small fraction of its stem's)."""
    full = model.full()
    whole = model.predict(full)
    cost = {}
    for name, space in model.spaces.items():
        half = dict(full, **{name: aligned(space, 0.5)})
        cut = space.width - half[name]
        cost[name] = (whole - model.predict(half)) / cut if cut else 0.0
    cheapest = min((c for c in cost.values() if c > 0), default=0.0)
    return {name: (cheapest / c) ** power if c > 0 else 1.0 for name, c in cost.items()}


def expansions(model: LatencyModel) -> set[str]:
    """Groups that one full convolution writes at least as wide as it reads: a MobileNetV2 block's expanded
    channels, a ResNet block's inner conv, the 1,280-channel head. They feed one layer inside a block and are
    redundant by design. The others are what blocks exchange: residual streams several layers add into, and
    projections that narrow the signal to what the next stage reads (everything downstream sees them)."""
    found = set()
    for name in model.spaces:
        writers = [layer for layer in model.layers if layer.out_group == name and not layer.depthwise]
        if len(writers) == 1 and writers[0].cout >= writers[0].cin:
            found.add(name)
    return found


def depth_shape(model: LatencyModel, tilt: float = 0.0, ratio: float = EXPANSION_RATIO) -> dict[str, float]:
    """A kept fraction per group (the largest 1): ``exp(tilt × (depth - ½))``, times ``ratio`` for an expansion;
    ``depth`` is the group's place in the network, 0 first, 1 last; the trial offers tilt 0. The expansions
    are the cheapest place to take channels from. At ⅛ of the latency (Fashion-MNIST, b32, the same measured
    time) ratio 0.5 scored above uniform widths on both networks measured: MobileNetV2 +0.7 point (+0.4 with
    five times the training images), ResNet-20 ×4 +0.4. A tilt of 1.5 (late layers wider: their channels run
    on small maps) did no better anywhere and worse on ResNet-20 ×4 (−0.3, and −0.5 and −0.8 when the trial
    kept it), so it left the trial (``benchmarks/width_shapes.py``).
    """
    first = {name: min(i for i, layer in enumerate(model.layers) if name in (layer.in_group, layer.out_group))
             for name in model.spaces}
    order = sorted(model.spaces, key=lambda name: first[name])
    inner = expansions(model)
    raw = {name: math.exp(tilt * (i / max(1, len(order) - 1) - 0.5)) * (ratio if name in inner else 1.0)
           for i, name in enumerate(order)}
    top = max(raw.values(), default=1.0)
    return {name: value / top for name, value in raw.items()}


def shape_of(model: LatencyModel, shape: float) -> dict[str, float]:
    """The kept fractions of one of ``SHAPES``."""
    if shape == BY_CHANNEL_COST:
        return channel_cost_shape(model)
    return depth_shape(model)


def frontier(model: LatencyModel, costs: Mapping[str, Curve], target_ms: float,
             blends: Iterable[float] = BLENDS) -> dict[float, Search]:
    """Widths at the same predicted latency from the greedy search's (blend 1) to uniform ones (blend 0): each
    group's kept fraction mixed ``blend × search + (1 - blend) × uniform``, then scaled to meet the target; and
    (BY_CHANNEL_COST) widths shaped by each group's latency per channel, and (LEAN_INSIDE) by
    block role (``depth_shape``). The search ranks groups by costs measured one group at a time; a
    trial among these says whether its answer survives fine-tuning better than the others do. Identical widths
    are given once (the first blend)."""
    greedy = search_widths(model, costs, target_ms)
    held = unmeasured(costs)  # the search leaves these whole (they could not be masked): so does every candidate
    flat = scaled(model, {name: 1.0 for name in model.spaces}, target_ms, held=held)
    found: dict[float, Search] = {}
    for blend in blends:
        if blend == 1.0 or not greedy.reached:
            option = greedy
        elif blend in SHAPES:
            option = scaled(model, shape_of(model, blend), target_ms, held=held)
        else:
            shape = {name: blend * greedy.widths[name] / space.width + (1 - blend) * flat.widths[name] / space.width
                     for name, space in model.spaces.items()}
            top = max(shape.values())
            option = scaled(model, {name: value / top for name, value in shape.items()}, target_ms, held=held)
        if all(option.widths != other.widths for other in found.values()):
            found[blend] = option
    return found


def resolve_target(target_ms: Optional[float], speedup: Optional[float], baseline_ms: Optional[float]) -> float:
    """``target_latency_ms``, or the report's baseline latency divided by ``target_speedup``."""
    if target_ms is not None:
        return float(target_ms)
    if speedup is None or baseline_ms is None:
        raise ValueError("no latency target: set prune.target_latency_ms or prune.target_speedup")
    return baseline_ms / speedup


# -- the layers of a torch model ---------------------------------------------------------------------
def describe_layers(model: Any, graph: Any, groups: list[Any], example: Any) -> list[Layer]:
    """Every Conv2d/Linear with its input size and the prunable groups that set its widths."""
    from torch import nn

    sizes: dict[Any, tuple[int, int]] = {}

    def record(module: Any, inputs: Any, _: Any) -> None:
        x = inputs[0]
        sizes[module] = (int(x.shape[2]), int(x.shape[3])) if x.dim() == 4 else (1, 1)

    modules = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(record) for m in modules]
    try:
        import torch

        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    sets_in: dict[Any, str] = {}
    sets_out: dict[Any, str] = {}
    for group in groups:
        for dep, _ in group.group:
            module = dep.target.module
            if graph.is_out_channel_pruning_fn(dep.handler):
                sets_out.setdefault(module, group.name)
            elif graph.is_in_channel_pruning_fn(dep.handler):
                sets_in.setdefault(module, group.name)
    names = {module: name for name, module in model.named_modules()}
    layers = []
    for module in modules:
        if module not in sizes:
            continue  # never run: costs nothing
        if isinstance(module, nn.Linear):
            layers.append(Layer(names[module], "linear", module.in_features, module.out_features,
                                sets_in.get(module), sets_out.get(module)))
            continue
        depthwise = 1 < module.groups == module.out_channels == module.in_channels
        out_group = sets_out.get(module) or (sets_in.get(module) if depthwise else None)
        layers.append(Layer(names[module], "conv", module.in_channels, module.out_channels,
                            out_group if depthwise else sets_in.get(module), out_group,
                            tuple(module.kernel_size), tuple(module.stride), _pair(module.padding),
                            tuple(module.dilation), module.groups, depthwise, sizes[module]))
    return layers


def _pair(padding: Any) -> tuple[int, int]:
    if isinstance(padding, str):
        raise ValueError(f"padding {padding!r}")
    return tuple(int(p) for p in padding)  # type: ignore[return-value]


# -- the variants as ONNX files -------------------------------------------------------------------------
def layer_onnx(layer: Layer, cin: int, cout: int, seed: int = 0) -> bytes:
    """One layer alone (Conv + Relu, or Gemm) at the given widths, with a dynamic batch: a variant to time."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    if layer.kind == "linear":
        weight = rng.standard_normal((cout, cin)).astype(np.float32) * 0.01
        nodes = [helper.make_node("Gemm", ["input", "w"], ["output"], transB=1)]
        shape_in, shape_out = ["batch", cin], ["batch", cout]
    else:
        groups = cout if layer.depthwise else layer.groups
        weight = rng.standard_normal((cout, cin // groups, *layer.kernel)).astype(np.float32) * 0.01
        nodes = [helper.make_node("Conv", ["input", "w"], ["conv"], kernel_shape=list(layer.kernel),
                                  strides=list(layer.stride), pads=[*layer.padding, *layer.padding],
                                  dilations=list(layer.dilation), group=groups),
                 helper.make_node("Relu", ["conv"], ["output"])]
        shape_in = ["batch", cin, *layer.size]
        shape_out = ["batch", cout, None, None]
    graph = helper.make_graph(nodes, "variant", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape_out)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit")
    model.ir_version = 8
    return model.SerializeToString()

