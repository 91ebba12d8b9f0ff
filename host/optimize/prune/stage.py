"""Stage 2, prune + fine-tune (``[prune]``): structured channel pruning, saved as history + weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..load import count
from ..runner import Context, Lazy, Output, Stage
from .latency import BY_CHANNEL_COST, LEAN_INSIDE, kept_blend

PRUNED = "pruned.pt"
PROBE_IMAGES = 16  # real images run after every pruning step and by the probe for unfollowable layers
CLOSEST_PROBES = 4  # fine-tunings spent finding the closest latency within the accuracy budget (a failing target)


def rebuild(ctx: Context, history: list[list]) -> Any:
    """The pruned architecture from the factory plus a pruning history (no pickled modules)."""
    from ...train.models import create_model
    from .structured import apply_history

    config = ctx.config
    model = create_model(config.model.arch, config.model.num_classes, config.model.width, config.input.shape[0])
    return apply_history(model, history, config.input.shape[0], config.input.shape[1]).eval()


class PruneStage(Stage):
    name = "prune"
    distributed = True  # fine-tuning runs as DDP under torchrun
    title = "prune + fine-tune"
    reads = ("prune",)
    unkeyed = ("prune.allow_accuracy_drop",)  # a verdict on the result, not an input to it

    def files(self, config: Any) -> dict[str, Path]:
        """With a latency target, the device's latency model: a new table (another device) prunes again."""
        if config.prune.latency_target and config.latency_model is not None:
            return {"latency_model": config.latency_model}
        return {}

    def trains(self, config: Any) -> bool:
        return config.prune.enabled and (config.prune.finetune_epochs > 0 or config.prune.sparsity_epochs > 0)

    def run(self, ctx: Context, out: Path) -> Output:
        if not ctx.config.prune.enabled:
            return Output(info={"enabled": False})
        model, info = prune(ctx, ctx.get("model"), ctx.get("data"), out)
        ctx.put("model", model)
        steps = info["step_rows"]
        rows = [dict(stage=f"pruned step {s['step']}/{len(steps)}", params=s["params"], macs=s["macs"],
                     note=f"validation top-1 {s['validation_top1']:.2%} after {s['finetune_epochs']} epoch(s)")
                for s in steps[:-1]]
        title = f"pruned {info['ratio']:.0%} + fine-tuned"
        if "latency" in info:
            title = f"pruned to {info['latency']['target_ms']:.3g} ms + fine-tuned"
        rows.append(dict(stage=title, params=steps[-1]["params"], macs=steps[-1]["macs"], top1=info["test_top1"],
                         note=info["note"]))
        return Output(rows=rows, info=info)  # pruned.pt stays in the stage directory: it is not shipped

    def restore(self, ctx: Context, out: Path, info: dict[str, Any]) -> None:
        if info.get("enabled", True):
            ctx.put("model", Lazy(lambda: _load_pruned(ctx, out / PRUNED)))

    def check(self, ctx: Context, info: dict[str, Any]) -> None:
        if info.get("enabled", True):
            load = ctx.info["load"]
            check_not_at_chance(ctx.config, load["torch_top1"], info["test_top1"], load["chance"], load["test_images"])
            if "latency" in info:
                check_latency_target(info["latency"], ctx.info["load"]["torch_top1"], info["test_top1"],
                                     ctx.info["load"]["test_images"])
            else:
                check_accuracy_drop(ctx.config, ctx.info["load"]["torch_top1"], info["test_top1"],
                                    ctx.info["load"]["test_images"])


def check_latency_target(latency: dict[str, Any], before: float, after: float, images: int) -> None:
    """A latency target that cannot be met within the accuracy budget fails before any upload, in one line
    with the closest latency that stays within it and its top-1 (``latency["closest"]``, found by the prune)."""
    from ...errors import CheckFailed

    closest = latency.get("closest")
    if closest is None:
        return
    where = (f"prune target {latency['target_ms']:.3g} ms at batch {latency['batch']} on {latency['device']} "
             f"({latency['backend']}, {latency['precision']})")
    check = latency.get("check")
    if check is not None and not check["met"] and not closest["accuracy_limited"]:
        raise CheckFailed(f"{where} is out of reach: after {len(check['rounds'])} latency check(s) on the device the "
                          f"closest measured is {check['measured_ms']:.3g} ms (predicted {check['predicted_ms']:.3g} "
                          f"ms), more than 15 % over, at top-1 {closest['top1']:.2%} on {images} held-out images; "
                          "raise the target or prune.max_layer_ratio")
    if not closest["accuracy_limited"]:  # the widths' floors are within the budget: the target is out of reach
        raise CheckFailed(f"{where} is out of reach: the closest is {closest['predicted_ms']:.3g} ms predicted (every "
                          f"group at prune.max_layer_ratio) at top-1 {closest['top1']:.2%} on {images} held-out "
                          "images; raise the target or prune.max_layer_ratio")
    reach = "reach" if latency["reached"] else "come closest to"
    at = (f"{closest['predicted_ms']:.3g} ms predicted at top-1 {closest['top1']:.2%}"
          + (" (the unpruned model)" if closest["unpruned"] else ""))
    raise CheckFailed(f"{where} cannot be met within prune.max_accuracy_drop = {latency['max_accuracy_drop']}: the "
                      f"widths that {reach} it ({latency['predicted_ms']:.3g} ms predicted) lose "
                      f"{(before - after) * 100:.1f} points ({before:.1%} → {after:.1%} on {images} held-out images); "
                      f"the closest within the budget is {at} ({len(closest['probes'])} fine-tuned probe(s)); raise "
                      "prune.target_latency_ms, fine-tune longer (prune.finetune_epochs, prune.distill = true) or "
                      "accept the loss with prune.allow_accuracy_drop = true")


def check_not_at_chance(config: Any, before: float, after: float, chance: float, images: int) -> None:
    """A model that had learnt its task and answers at chance once pruned is refused whatever the budget says
    (prune.max_accuracy_drop, prune.allow_accuracy_drop): allowing a loss is not asking for a model that
    guesses, and a push would report its latency as though it were the user's model (MNASNet 41 % → 13 % and
    SqueezeNet 28.6 % → 10.3 % on the digits went through with allow_accuracy_drop). A model already at chance
    when trained is not refused here: the load stage says so, and pruning cannot make it worse."""
    from ...errors import CheckFailed
    from ...train.project import at_chance

    if not at_chance(after, chance) or at_chance(before, chance):
        return
    section = config.prune
    finetune = f"prune.finetune_epochs = {max(3, 2 * section.finetune_epochs)}, now {section.finetune_epochs}"
    less = "prune less (a higher prune.target_latency_ms or lower target_speedup)" if section.latency_target else (
        f"prune less (prune.ratio = {section.ratio / 2:g}, now {section.ratio:g})")
    # a fine-tune faster than the training can undo it (SqueezeNet, trained at 0.002, died at prune.lr 0.01)
    trained_at = config.train.lr
    slower = (f"fine-tune no faster than it was trained (prune.lr = {trained_at:g}, now {section.lr:g}), "
              if section.lr > trained_at else "")
    raise CheckFailed(f"prune + fine-tune left the model at chance: top-1 {before:.1%} → {after:.1%} on {images} "
                      f"held-out images (chance {chance:.1%}); a model that guesses is not pushed, whatever "
                      f"prune.max_accuracy_drop and prune.allow_accuracy_drop say. {slower.capitalize()}"
                      f"{'f' if slower else 'F'}ine-tune longer ({finetune}) or {less}")


def check_accuracy_drop(config: Any, before: float, after: float, images: int) -> None:
    """``prune.max_accuracy_drop`` is a promise: missing it fails the push with the figures, unless allowed."""
    from ...errors import CheckFailed

    section = config.prune
    budget = section.max_accuracy_drop
    if budget is None or before - after <= budget + 1e-9:
        return
    figures = (f"pruning lost {(before - after) * 100:.1f} points of top-1 ({before:.1%} → {after:.1%} on "
               f"{images} held-out images), more than prune.max_accuracy_drop = {budget}")
    if section.allow_accuracy_drop:
        return
    raise CheckFailed(f"{figures}; fine-tune longer (prune.finetune_epochs, prune.distill = true), prune less "
                      "(prune.ratio), or accept it with prune.allow_accuracy_drop = true (the pruned model is cached)")


def recovered(validation_top1: float, baseline: float) -> bool:
    """Early stop: fine-tuning ends once validation top-1 is back at the unpruned model's, not merely within
    ``max_accuracy_drop`` of it. The budget covers the whole chain on held-out images: stopping at its edge
    on the small validation split (while the cosine schedule's learning rate is still high) left nothing
    for INT8 or for the split's noise, and the demo lost 1.4 points where the budget allowed 1."""
    return validation_top1 >= baseline - 1e-9


def _load_pruned(ctx: Context, path: Path) -> Any:
    from ...train.checkpoint import load_model

    config = ctx.config
    return load_model(path, config.model.arch, config.model.num_classes, config.model.width,
                      config.input.shape[0])[0]


def prune(ctx: Context, model: Any, data: Any, out: Path) -> tuple[Any, dict[str, Any]]:
    """Prune → fine-tune (iteratively) on a split of the training images; saves ``pruned.pt``."""
    import copy

    import torch

    from ...train.accelerator import describe, resolve
    from ...train.checkpoint import save_checkpoint
    from ...train.data import batches, normalize
    from ...train.loop import top1, train
    from .structured import PruneSpec, prune_model

    config, say = ctx.config, ctx.say
    section = config.prune
    output = config.model.output
    device = resolve(config.train.device)
    model.to(device)
    mean, std = ctx.info["load"]["mean"], ctx.info["load"]["std"]
    fitting, validation = data.train.hold_out(section.validation_fraction, config.train.seed)
    baseline = top1(model, validation, mean, std, output=output)
    spec = PruneSpec(**section.model_dump(), output=output, num_classes=config.model.num_classes)

    def fit(net: Any, step: int, loss_fn: Any, after_backward: Any) -> tuple[int, float]:
        epochs = section.sparsity_epochs if step == 0 else section.finetune_epochs
        stop = None
        if step > 0 and section.early_stop:
            stop = lambda epoch: recovered(top1(net, validation, mean, std, output), baseline)  # noqa: E731
        ran = train(net, fitting, mean, std, epochs=epochs, batch_size=config.train.batch_size, lr=section.lr,
                    momentum=config.train.momentum, weight_decay=config.train.weight_decay,
                    augment=tuple(config.train.augment), seed=config.train.seed + step, loss_fn=loss_fn,
                    after_backward=after_backward, stop=stop, device=device, amp=config.train.amp,
                    output=output) if epochs else 0
        return ran, top1(net, validation, mean, std, output)

    say(f"pruning on {describe(device)}")
    example = torch.zeros(1, *config.input.shape, device=device)
    batch = torch.from_numpy(normalize(fitting.images[:PROBE_IMAGES], mean, std)).to(device)
    chooser = LatencyChooser(ctx, say) if section.latency_target else None
    original = copy.deepcopy(model) if chooser is not None else None  # the closest-within-budget probes start here
    steps = prune_model(model, spec, example, lambda step: batches(fitting, 64, mean, std, shuffle=True, seed=step),
                        fit, say, batch=batch, widths_for=chooser)
    model.cpu()
    shape = config.input.shape
    history = []
    for step in steps:
        snapshot = model  # the last step is the model itself: no rebuild (a graph trace) needed
        if step is not steps[-1]:
            snapshot = rebuild(ctx, step.history)
            snapshot.load_state_dict(step.state)
        history.append(dict(step=step.step, **count(snapshot, shape), finetune_epochs=step.epochs,
                            validation_top1=step.validation_top1))
    final = steps[-1]
    meta = dict(ctx.info["load"]["checkpoint_meta"], pruning_history=final.history, pruned_from=config.model.arch,
                input_shape=shape)
    save_checkpoint(out / PRUNED, model, meta)
    epochs = sum(s.epochs for s in steps)
    protected = final.protected
    note = f"{spec.method}, {spec.steps} step(s), {epochs} fine-tune epoch(s), round_to {spec.round_to}"
    if protected:
        note += f"; left whole (torch-pruning cannot follow them): {', '.join(protected)}"
    latency = chooser.result if chooser is not None else None
    if latency is not None:
        note = (f"{latency_note(latency)}; " + note).replace(f", round_to {spec.round_to}", "")
    info = {"method": spec.method, "ratio": spec.ratio, "scope": spec.scope, "steps": spec.steps,
            "round_to": spec.round_to, "cost_weight": spec.cost_weight, "validation_baseline": baseline,
            "finetune_epochs": [s.epochs for s in steps], "step_rows": history, "protected": protected,
            "device": str(device), "test_top1": top1(model.eval(), data.test, mean, std, output), "note": note}
    if latency is not None:
        evaluate = lambda net: top1(net.eval(), data.test, mean, std, output)  # noqa: E731
        latency["closest"] = closest_within_budget(ctx, chooser, original, final.protected, fit, evaluate,
                                                   info["test_top1"], say)
        latency["max_accuracy_drop"] = section.max_accuracy_drop
        info["latency"] = latency
    return model.eval(), info


def closest_within_budget(ctx: Context, chooser: "LatencyChooser", original: Any, auto: dict[str, str], fit: Any,
                          evaluate: Any, final_top1: float, say: Any) -> dict[str, Any] | None:
    """When the target is out of reach or its widths lose more than ``max_accuracy_drop`` (on the held-out images
    the budget is promised on), the closest latency that stays within the budget, and its top-1: points of the
    greedy path pruned from the unpruned model in one shot and fine-tuned, by bisection (``closest_on_path``,
    at most CLOSEST_PROBES fine-tunings). None when the target is met within the budget."""
    from ...outputs import output_layers
    from .latency import closest_on_path
    from .structured import prune_copy

    section = ctx.config.prune
    before = ctx.info["load"]["torch_top1"]
    budget = None if section.allow_accuracy_drop else section.max_accuracy_drop
    within = budget is None or before - final_top1 <= budget + 1e-9
    path, latency = chooser.path, chooser.result
    if within:
        if latency["reached"]:
            return None
        return {"predicted_ms": path[-1][1], "top1": final_top1, "widths": path[-1][0], "unpruned": False,
                "accuracy_limited": False, "probes": []}
    if len(path) < 2:  # nothing was cut: the loss is fine-tuning's, the unpruned model is the closest
        return {"predicted_ms": path[0][1], "top1": before, "widths": path[0][0], "unpruned": True,
                "accuracy_limited": True, "probes": []}
    import torch

    example = torch.zeros(1, *ctx.config.input.shape)
    original = original.cpu()
    protect = list(dict.fromkeys([*section.protect, *output_layers(original.eval(), example), *auto]))
    judged: dict[int, float] = {}

    def judge(index: int) -> bool:
        say(f"closest latency within prune.max_accuracy_drop: fine-tuning point {index}/{len(path) - 1} of the "
            f"search ({path[index][1]:.3g} ms predicted), probe {len(judged) + 1} of at most {CLOSEST_PROBES}")
        net = prune_copy(original, example, protect, path[index][0], chooser.scores)
        fit(net, 1, None, None)
        judged[index] = evaluate(net.cpu())
        return before - judged[index] <= budget + 1e-9

    index, tried = closest_on_path(len(path), judge, len(path) - 1, CLOSEST_PROBES)
    return {"predicted_ms": path[index][1], "top1": judged.get(index, before), "widths": path[index][0],
            "unpruned": index == 0, "accuracy_limited": True,
            "probes": [{"predicted_ms": path[i][1], "top1": judged[i]} for i in tried]}


class LatencyChooser:
    """``prune_model``'s ``widths_for`` for a latency target: the greedy search on the device's latency model;
    keeps what it chose (widths, prediction, target) for the stage's table and checks."""

    def __init__(self, ctx: Context, say: Any) -> None:
        from ...errors import ConfigError
        from .latency import load_model_file, resolve_target

        section, path = ctx.config.prune, ctx.config.latency_model
        if path is None:
            raise ConfigError("prune.target_latency_ms / target_speedup are measured on a device: run `edgekit push "
                              "<device>` (edgekit optimize alone has no device to measure on)")
        self.model, self.saved = load_model_file(path)
        self.target = resolve_target(section.target_latency_ms, section.target_speedup, self.saved["baseline_ms"])
        self.speedup = section.target_speedup  # None for a milliseconds target (the config refuses both)
        self.say = say
        self.result: dict[str, Any] | None = None
        self.path: list[tuple[dict[str, int], float]] = []
        self.scores: dict[str, Any] = {}

    def __call__(self, scores: dict[str, Any], widths: dict[str, int]) -> dict[str, int]:
        from .latency import search_widths
        from .sensitivity import magnitude_costs

        costs = self.saved.get("accuracy_costs") or magnitude_costs(
            {name: score.tolist() for name, score in scores.items()}, self.model.spaces)
        found = search_widths(self.model, costs, self.target)
        self.path, self.scores = found.path, scores
        saved = self.saved
        self.result = {"target_ms": self.target, "predicted_ms": found.predicted_ms, "reached": found.reached,
                       "widths": found.widths, "full": self.model.full(), "batch": saved["batch"],
                       "device": saved["device"], "backend": saved["backend"], "precision": saved["precision"],
                       "baseline_ms": saved["baseline_ms"], "unpruned_ms": self.model.predict(self.model.full()),
                       "target_speedup": self.speedup}
        checked = saved.get("checked", {}).get(f"{self.target:.6g}")
        if checked is not None:  # the push measured widths for this target on the device: those are pruned to
            self.result.update(widths=checked["widths"], predicted_ms=checked["predicted_ms"], reached=checked["met"],
                               check=checked)
            self.say(f"latency target {self.target:.3g} ms at batch {saved['batch']} on {saved['device']}: widths "
                     f"measured {checked['measured_ms']:.3g} ms there after {len(checked['rounds'])} check round(s)")
            return {name: checked["widths"].get(name, width) for name, width in widths.items()}
        self.say(f"latency target {self.target:.3g} ms at batch {saved['batch']} on {saved['device']}: "
                 f"{'predicted' if found.reached else 'out of reach, closest'} {found.predicted_ms:.3g} ms "
                 f"(unpruned {self.result['unpruned_ms']:.3g} ms) after {found.steps} greedy step(s)")
        return {name: found.widths.get(name, width) for name, width in widths.items()}


def latency_note(latency: dict[str, Any]) -> str:
    """The stage table's words for a latency-target pruning: target, prediction, widths per group."""
    changed = [f"{name} {latency['full'][name]}→{width}" for name, width in latency["widths"].items()
               if width != latency["full"][name]]
    checks = ""
    if "check" in latency:
        rounds = latency["check"]["rounds"]
        checks = "; checked " + ", ".join(f"{r['predicted_ms']:.3g}→{r['measured_ms']:.3g} ms"
                                          for r in rounds) + " (predicted→measured)"
        blend = kept_blend(latency["check"])
        checks += {1.0: "", 0.0: "; uniform widths kept by the trial fine-tune",
                   BY_CHANNEL_COST: "; widths shaped by each group's latency per channel kept by the trial fine-tune",
                   LEAN_INSIDE: "; widths narrower inside blocks kept by the trial fine-tune"
                   }.get(blend, f"; widths {blend:g} of the way from uniform to the search's kept by the trial "
                                "fine-tune" if 0 < blend < 1 else "; widths of a trial candidate no longer offered "
                                "(a check cached by an earlier edgekit)")
    return (f"target {latency['target_ms']:.3g} ms at b{latency['batch']} on {latency['device']}, predicted "
            f"{latency['predicted_ms']:.3g} ms{checks}; widths {', '.join(changed) or 'unchanged'}")
