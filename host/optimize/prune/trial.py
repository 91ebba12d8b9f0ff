"""A short fine-tune of candidate widths: which of several prunings at the same predicted latency recovers best.

The latency search ranks groups by accuracy costs measured one group at a time on the unretrained model. That
misses what cutting several groups together does: a residual block's channels alone are redundant (the skip
connection carries the signal), all blocks' together are not, and far enough pruned (a quarter of the latency)
every unretrained candidate is at chance, so no zero-shot loss tells them apart. NetAdapt's answer is a
short-term fine-tune of each candidate; here it chooses among the search's widths, uniform ones, a blend and
two shapes (``latency.frontier``), every candidate cut from the same model, trained on the same images in the
same order, judged by the loss on held-out training images (continuous, so steadier than top-1 on a few
hundred images). Uniform widths are kept unless another candidate's loss is lower by more than those images'
own noise (``choose``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

TRIAL_IMAGES = 2048  # the passes go over at most this many training images per candidate: bounded whatever the data
TRIAL_EPOCHS = 3
"""Passes per candidate. After one, a network cut to ⅛ of its latency is still near chance (held-out loss
2.25-2.35, chance 2.30): the losses ranked seven MobileNetV2 shapes at the same measured time against their
5-epoch top-1 with Spearman -0.68 and kept one 1.6 points under the best; after three, +0.82, 0.3 point
under it (Fashion-MNIST, batch 32: ``benchmarks/trial_passes.py``). On stop 41's shapes: 0.21 and 0.68, both
keeping the best."""

DEFAULT = "uniform"  # the candidate kept unless another is clearly better: what users would have done by hand
MARGIN = 2.0
"""How many paired standard errors of the held-out loss another candidate must beat DEFAULT by. The held-out
images are few (a tenth of the 2,000 training images in the benchmark), and a short fine-tune's lower loss
did not carry over to the full fine-tune: at ⅛ of ResNet-20 ×4's latency the trial kept candidates 0.07 and
0.03 lower in loss than uniform widths, which ended 0.8 and 0.6 point under them (Fashion-MNIST, b32, 3
seeds). A gap inside the held-out images' own noise is no evidence; this guard asks for one outside it. It
is no cure for a short fine-tune misjudging a long one: the 0.03 gap was inside 2 × 0.017 and is now refused,
the 0.07 one, at a like error, would pass."""


class Tried(NamedTuple):
    """One candidate's short fine-tune: mean held-out loss, top-1, and the loss of every held-out image."""

    loss: float
    top1: float
    losses: Sequence[float] = ()


@dataclass(frozen=True)
class TrialSetup:
    """What a trial fine-tune needs besides the candidates: the model, how it is cut and trained, the data."""

    model: Any
    example: Any
    protect: list[str]
    scores: dict[str, Any]
    fitting: Any  # Split
    validation: Any  # Split
    mean: list[float]
    std: list[float]
    train_options: dict[str, Any]  # train()'s keyword arguments: batch_size, lr, momentum, augment, seed, ...
    output: Any = 0


def trial(setup: TrialSetup, say: Callable[[str], None]) -> Callable[[list[dict[str, int]]], int]:
    """The closed loop's ``trial``: the index of the candidate whose held-out loss is lowest after a short
    fine-tune (ties: the earlier candidate, the search's own widths first), unless that loss is not clearly
    below DEFAULT's (``choose``): then DEFAULT is kept."""

    def pick(candidates: list[dict[str, int]], names: list[str]) -> int:
        say(f"trial: fine-tuning {len(candidates)} candidate widths, {TRIAL_EPOCHS} passes each over at most "
            f"{min(TRIAL_IMAGES, len(setup.fitting))} training images")
        tried = [_tried(setup, widths, index, say) for index, widths in enumerate(candidates, 1)]
        best, why = choose(tried, names)
        say("short fine-tune of {} candidate widths at the same predicted latency ({}): held-out loss {} / top-1 {}; "
            "kept {}{}".format(len(candidates), " → ".join(names), " / ".join(f"{t.loss:.3f}" for t in tried),
                               " / ".join(f"{t.top1:.1%}" for t in tried), names[best], why))
        return best

    return pick


def choose(tried: Sequence[Tried], names: Sequence[str]) -> tuple[int, str]:
    """The candidate to keep and, when DEFAULT is kept over a lower loss, why: the lowest held-out loss (ties:
    the earlier candidate) if it is at least MARGIN paired standard errors below DEFAULT's, else DEFAULT."""
    best = min(range(len(tried)), key=lambda i: (tried[i].loss, i))
    fallback = names.index(DEFAULT) if DEFAULT in names else best
    default = tried[fallback]
    if fallback == best or not math.isfinite(default.loss):
        return best, ""
    gap, error = paired_gap(tried[best].losses, default.losses)
    if gap <= -MARGIN * error:
        return best, ""
    return fallback, (f" ({names[best]}'s loss {default.loss - tried[best].loss:.3f} lower, within {MARGIN:g} "
                      f"paired standard errors ({error:.3f}) on {len(default.losses)} held-out images)")


def paired_gap(losses: Sequence[float], default: Sequence[float]) -> tuple[float, float]:
    """Mean per-image loss difference (``losses`` − ``default``, on the same held-out images) and its standard
    error: paired, so what makes an image hard for both cancels out. Infinite when there is nothing to pair."""
    diffs = [a - b for a, b in zip(losses, default)]
    if len(diffs) < 2:
        return math.inf, math.inf
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def _tried(setup: TrialSetup, widths: dict[str, int], index: int, say: Callable[[str], None]) -> Tried:
    """``trial_loss``, or an infinite loss with one line when the candidate cannot be cut or trained (a model
    torch-pruning follows only part of): the others are still compared, and the search's own widths win ties."""
    try:
        return trial_loss(setup, widths)
    except Exception as exc:  # noqa: BLE001 - a user's model: one line, never a traceback from a trial
        say(f"trial: candidate {index} could not be fine-tuned ({type(exc).__name__}: {str(exc)[:160]}); not kept")
        return Tried(math.inf, 0.0)


def trial_loss(setup: TrialSetup, widths: dict[str, int], passes: int = TRIAL_EPOCHS) -> Tried:
    """Held-out loss and top-1 of the model cut to ``widths`` after ``passes`` over at most TRIAL_IMAGES."""
    import torch

    from ...train.data import Split
    from ...train.loop import predict, train
    from .structured import prune_copy

    net = prune_copy(setup.model, setup.example, setup.protect, widths, setup.scores)
    images = Split(setup.fitting.images[:TRIAL_IMAGES], setup.fitting.labels[:TRIAL_IMAGES])
    train(net, images, setup.mean, setup.std, epochs=passes, output=setup.output, **setup.train_options)
    with torch.no_grad():
        logits = predict(net, setup.validation, setup.mean, setup.std, output=setup.output)
    labels = torch.as_tensor(setup.validation.labels, dtype=torch.long)
    losses = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    return Tried(float(losses.mean()), float((logits.argmax(1) == labels).float().mean()), losses.tolist())
