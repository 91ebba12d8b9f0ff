"""Training and top-1 evaluation in torch: SGD with momentum, cosine learning-rate schedule.

Runs on ``device`` (see ``accelerator.py``: CUDA when present) with optional mixed precision; models
that return several outputs are trained and evaluated on their classifier output (``output``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..outputs import OutputKey, select
from . import distributed
from .accelerator import autocast, device_of, grad_scaler
from .data import Split, batches

Progress = Callable[[int, int, float], None]  # epoch, epochs, loss


def train(model: nn.Module, split: Split, mean: list[float], std: list[float], *, epochs: int, batch_size: int,
          lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, augment: tuple[str, ...] = (),
          seed: int = 0, progress: Optional[Progress] = None,
          loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
          after_backward: Optional[Callable[[], None]] = None,
          stop: Optional[Callable[[int], bool]] = None, device: Optional[torch.device] = None,
          amp: bool = False, output: OutputKey = 0) -> int:
    """Train in place (on ``device``, default: where the model is) and return the epochs run.

    ``loss_fn(logits, labels, inputs)`` replaces cross-entropy (distillation), ``after_backward`` edits
    gradients (network slimming's L1 on BN scales), ``stop(epoch)`` ends training early (accuracy budget met).
    Under torchrun it trains as one rank of DistributedDataParallel (``distributed.py``): ``stop`` is rank 0's
    to decide, and every rank ends with rank 0's weights.
    """
    torch.manual_seed(seed)
    device = distributed.local_device(device or device_of(model))
    model.to(device)
    net = distributed.wrap(model, device) if distributed.active() else model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                nesterov=momentum > 0)
    steps = epochs * math.ceil(len(split) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    criterion = nn.CrossEntropyLoss()
    scaler = grad_scaler(device, amp)
    with distributed.synced_batchnorm(model):
        ran = _epochs(model, net, split, mean, std, epochs, batch_size, optimizer, schedule, scaler, criterion,
                      augment, seed, progress, loss_fn, after_backward, stop, device, amp, output)
    distributed.take_main_weights(model)
    settle_batchnorm(model, split, mean, std, batch_size, ran * steps // max(1, epochs), device, output)
    model.eval()
    return ran


def slow_batchnorms(model: nn.Module, steps: int) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers whose running statistics, after ``steps`` updates, still hold over 5 % of what they
    held before the last tenth of the training: a TensorFlow-style momentum (MNASNet's 0.0003, MobileNetV3's
    and EfficientNet's 0.01) over a training of hundreds, not hundreds of thousands, of steps. Such statistics
    average weights the training has since moved away from (or still the initial 0/1), and over dozens of
    layers the mismatch compounds: MobileNetV3 trained 345 steps on the digits held 99 % top-1 with its
    statistics re-estimated and 10 % (chance) with its own. PyTorch's default momentum (0.1: 95 % replaced
    within 29 steps) is the reference, so its layers are kept unless the training was shorter than that."""
    recent = max(steps / 10, _replaced_within(0.1))
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.momentum is not None and ((1 - m.momentum) ** steps > 0.05
                                            or 0 < m.momentum < 1 and _replaced_within(m.momentum) > recent)]


def _replaced_within(momentum: float) -> float:
    """Updates after which an exponential average with ``momentum`` holds under 5 % of what it held before."""
    return math.log(0.05) / math.log(1 - momentum)


@torch.no_grad()
def settle_batchnorm(model: nn.Module, split: Split, mean: list[float], std: list[float], batch_size: int,
                     steps: int, device: torch.device, output: OutputKey = 0) -> int:
    """Re-estimate the running statistics of the slow BatchNorm layers (``slow_batchnorms``) over one pass of
    the training images, and return how many: left as they are, eval mode normalises with mostly the initial
    mean 0 / variance 1, the activations blow up through the network and held-out top-1 falls to chance
    although training went well. The other layers and the weights are untouched."""
    slow = slow_batchnorms(model, steps)
    if not slow:
        return 0
    model.eval()
    momenta = [layer.momentum for layer in slow]
    for layer in slow:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the pass
        layer.train()
    for inputs, _ in batches(split, batch_size, mean, std):
        if len(inputs) > 1:  # a last batch of one image has no batch statistics on a 1×1 map
            select(model(inputs.to(device)), output)
    for layer, momentum in zip(slow, momenta):
        layer.momentum = momentum
    model.eval()
    return len(slow)


def _epochs(model: nn.Module, net: nn.Module, split: Split, mean: list[float], std: list[float], epochs: int,
            batch_size: int, optimizer: Any, schedule: Any, scaler: Any, criterion: Any, augment: tuple[str, ...],
            seed: int, progress: Optional[Progress], loss_fn: Any, after_backward: Any, stop: Any,
            device: torch.device, amp: bool, output: OutputKey) -> int:
    for epoch in range(epochs):
        net.train()
        total, count = 0.0, 0
        # under torch.distributed every rank draws the whole global batch (one process's shuffle and augmentation)
        # and keeps its share of it: the same steps on the same samples as one process
        source = batches(split, batch_size, mean, std, shuffle=True, augment=augment, seed=seed + epoch)
        for inputs, labels, weight in distributed.shares(source):
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                logits = select(net(inputs), output)
                loss = loss_fn(logits, labels, inputs) if loss_fn else criterion(logits, labels)
            scaler.scale(loss * weight).backward()
            if after_backward:
                scaler.unscale_(optimizer)
                after_backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            total += float(loss.detach()) * len(labels)
            count += len(labels)
        total, count = distributed.total([total, count])
        if progress and distributed.is_main():
            progress(epoch + 1, epochs, total / max(1, count))
        if stop and distributed.agree(distributed.is_main() and bool(stop(epoch + 1))):
            return epoch + 1
    return epochs


@torch.no_grad()
def predict(model: nn.Module, split: Split, mean: list[float], std: list[float], batch_size: int = 256,
            output: OutputKey = 0) -> torch.Tensor:
    """Classifier logits for a split, computed where the model lives, returned on the CPU."""
    model.eval()
    device = device_of(model)
    return torch.cat([select(model(inputs.to(device)), output).float().cpu()
                      for inputs, _ in batches(split, batch_size, mean, std)])


def top1(model: nn.Module, split: Split, mean: list[float], std: list[float], output: OutputKey = 0) -> float:
    logits = predict(model, split, mean, std, output=output)
    return float((logits.argmax(1).numpy() == split.labels).mean())
