"""A short fine-tune of candidate widths: which of several prunings at the same predicted latency recovers best.

The latency search ranks groups by accuracy costs measured one group at a time on the unretrained model. That
misses what cutting several groups together does: a residual block's channels alone are redundant (the skip
connection carries the signal), all blocks' together are not, and far enough pruned (a quarter of the latency)
every unretrained candidate is at chance, so no zero-shot loss tells them apart. NetAdapt's answer is a
short-term fine-tune of each candidate; here it chooses among the search's widths, uniform ones, a blend and
widths shaped by each group's latency per channel (``latency.frontier``), every candidate cut from the same
model, trained on the same images in the same order, judged by the loss on held-out training images
(continuous, so steadier than top-1 on a few hundred images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

TRIAL_IMAGES = 2048  # the passes go over at most this many training images per candidate: bounded whatever the data
TRIAL_EPOCHS = 3
"""Passes per candidate. After one, a network cut to ⅛ of its latency is still near chance (held-out loss
2.25-2.35, chance 2.30): the losses ranked seven MobileNetV2 shapes at the same measured time against their
5-epoch top-1 with Spearman -0.68 and kept one 1.6 points under the best; after three, +0.82, 0.3 point
under it (Fashion-MNIST, batch 32: ``benchmarks/trial_passes.py``). On stop 41's shapes: 0.21 and 0.68, both
keeping the best."""


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
    fine-tune (ties: the earlier candidate, the search's own widths first)."""

    def pick(candidates: list[dict[str, int]], names: list[str]) -> int:
        say(f"trial: fine-tuning {len(candidates)} candidate widths, {TRIAL_EPOCHS} passes each over at most "
            f"{min(TRIAL_IMAGES, len(setup.fitting))} training images")
        losses = [_tried(setup, widths, index, say) for index, widths in enumerate(candidates, 1)]
        best = min(range(len(losses)), key=lambda i: (losses[i][0], i))
        say("short fine-tune of {} candidate widths at the same predicted latency ({}): held-out loss {} / top-1 {}; "
            "kept {}".format(len(candidates), " → ".join(names), " / ".join(f"{loss:.3f}" for loss, _ in losses),
                             " / ".join(f"{acc:.1%}" for _, acc in losses), names[best]))
        return best

    return pick


def _tried(setup: TrialSetup, widths: dict[str, int], index: int, say: Callable[[str], None]) -> tuple[float, float]:
    """``trial_loss``, or an infinite loss with one line when the candidate cannot be cut or trained (a model
    torch-pruning follows only part of): the others are still compared, and the search's own widths win ties."""
    try:
        return trial_loss(setup, widths)
    except Exception as exc:  # noqa: BLE001 - a user's model: one line, never a traceback from a trial
        say(f"trial: candidate {index} could not be fine-tuned ({type(exc).__name__}: {str(exc)[:160]}); not kept")
        return float("inf"), 0.0


def trial_loss(setup: TrialSetup, widths: dict[str, int], passes: int = TRIAL_EPOCHS) -> tuple[float, float]:
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
    loss = float(torch.nn.functional.cross_entropy(logits.float(), labels))
    return loss, float((logits.argmax(1) == labels).float().mean())
