"""Why a training ended far below what its data allows, and which [train] setting to change.

``edgekit train`` warns when held-out top-1 is at chance (``project.near_chance``); a model that ends well
above chance but far below what it could reach (MNASNet at 41 % on the ten digits, where ResNet-18 reaches
99 %) got no word, and the user pruned and quantised a model that was never trained properly. Three figures
tell the usual causes apart without a second training: the training loss per epoch (did it fall? did it get
low?), and top-1 on the training images in eval mode beside top-1 on the held-out ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Recipe:
    """The [train] settings the hint names, with their current values."""

    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    augment: tuple[str, ...]


def learnt(accuracy: float, chance: float) -> float:
    """How far ``accuracy`` is from chance towards perfect: 0 at chance, 1 at 100 %."""
    return (accuracy - chance) / max(1e-9, 1 - chance)


def far_below(held_out: float, chance: float) -> bool:
    """Under halfway from chance to perfect on held-out images (55 % on ten classes): worth a diagnosis."""
    return learnt(held_out, chance) < 0.5


def training_hint(held_out: float, train_eval: float, losses: Sequence[float], chance: float, classes: int,
                  recipe: Recipe) -> Optional[str]:
    """One line naming the likely cause and the setting to change, or None when held-out top-1 is not far
    below what a trained classifier reaches (``far_below``) or nothing can be said (no epoch ran).

    ``train_eval``: top-1 on the training images in eval mode; ``losses``: mean training loss per epoch (train
    mode, augmented). Chance-level cross-entropy is ln(classes)."""
    if not losses or not far_below(held_out, chance):
        return None
    first, last, chance_loss = losses[0], losses[-1], math.log(max(2, classes))
    head = f"hint: held-out top-1 {held_out:.1%} is far below what this data set allows; "
    # no better than guessing, or not falling: the step size (diverged, a dead ReLU, or never moved), not the length
    if not math.isfinite(last) or last > 0.9 * chance_loss or (len(losses) > 1 and last > 0.9 * first):
        # SGD recipes use 0.01-0.1: below 1e-3 the weights barely move, above it a stuck loss means divergence
        change = (f"raise train.lr (now {recipe.lr:g}; try 0.01)" if recipe.lr < 1e-3 and math.isfinite(last)
                  else f"lower train.lr (now {recipe.lr:g}; try {recipe.lr / 5:g})")
        return (head + f"the training loss ended at {last:.3g} ({first:.3g} after the first of {len(losses)} "
                f"epoch(s); guessing is {chance_loss:.3g}): {change}")
    if last > 0.5 * chance_loss:
        return (head + f"the training loss was still {last:.3g} at the last epoch (chance is {chance_loss:.3g}): "
                f"train longer (train.epochs now {recipe.epochs}; try {recipe.epochs * 2})")
    if far_below(train_eval, chance):
        return (head + f"it fits the training images while training (loss {last:.3g}) but scores {train_eval:.1%} on "
                "them in eval mode: its BatchNorm running statistics (or dropout) do not match the trained weights; "
                f"raise train.batch_size (now {recipe.batch_size}) or train.epochs (now {recipe.epochs})")
    # crop only: flipping is wrong for digits and text, so it is the user's call
    augment = f"train.augment = {list(recipe.augment) + ['crop']}, " if "crop" not in recipe.augment else ""
    return (head + f"it scores {train_eval:.1%} on its training images but {held_out:.1%} on held-out ones (it "
            f"memorises them): {augment}raise train.weight_decay (now {recipe.weight_decay:g}) or add training "
            "images, and check that the held-out images come from the same source")
