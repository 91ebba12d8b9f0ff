"""Training stages under PyTorch's own distributed engine (``torch.distributed``, started by ``torchrun``).

edgekit does not invent a launcher: under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the
training loop wraps the model in DistributedDataParallel; ``[train] nproc = N`` starts ``torch.distributed.run``
itself. NCCL on GPUs, gloo on CPUs. Rank 0 alone evaluates, writes checkpoints and the stage cache; the other ranks
wait for it at a barrier and then hold rank 0's weights.

W workers are one process by construction, not in expectation: every rank draws the single process's shuffle and
augmentation for each global batch of ``[train] batch_size`` and keeps every W-th sample of it (``part``), its loss
weighted so that DDP's gradient average is the mean over the whole batch; BatchNorm normalises with the whole
batch's statistics (``synced_batchnorm``). Same global batch, same steps, same learning rate, same samples in each
step. (A DistributedSampler instead gives each rank its own shuffle, pads the shards with repeated samples, and
per-rank BatchNorm sees 1/W of the batch: measured 2.5 to 7.8 points of top-1 away from one process.)
"""

from __future__ import annotations

import atexit
import functools
import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, NoReturn, Sequence


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """True in a worker of a multi-process run (torchrun sets WORLD_SIZE)."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: Any) -> Any:
    """Each rank its own GPU (LOCAL_RANK); CPU ranks share the CPU."""
    import torch

    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init(device: Any = None) -> None:
    """Join the process group once (env:// rendezvous, set up by torchrun)."""
    import torch.distributed as dist

    if active() and not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(leave)


def leave() -> None:
    """Leave the process group before the interpreter exits: a gloo group still alive at exit has its threads
    torn down by the C++ runtime, which aborts the worker now and then ("terminate called without an active
    exception", SIGABRT) after it finished its work, and torchrun reports the whole run failed (pytorch/pytorch
    #190489: Gloo threads still holding tensors when the interpreter is torn down)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def end(code: object) -> NoReturn:
    """A worker's exit with ``code`` (a ``SystemExit`` code) that the C++ runtime's teardown cannot turn into a
    failure. Measured here: with the group left, 1 run in ~30 of a finished 2-rank training still aborted after
    Python had finalised ("terminate called without an active exception", no Python frame: a C++ static's thread
    at process exit), and torchrun reported the run failed. A worker has written all it writes by now, so it
    leaves the group, flushes its output and exits without that teardown. Outside torchrun: ``sys.exit``."""
    if not active():
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    leave()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(code or 0)


def barrier() -> None:
    """Every rank waits here until all arrive (the others wait for rank 0's writes)."""
    if active():
        import torch.distributed as dist

        init()
        dist.barrier()


def agree(flag: bool) -> bool:
    """Rank 0's decision (an early stop it evaluated) given to every rank, so none trains an epoch more."""
    if not active():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0])
    dist.broadcast(value, 0)
    return bool(value.item())


def total(values: Sequence[float]) -> list[float]:
    """Sums over the ranks (the epoch's loss for the progress bar)."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def wrap(model: Any, device: Any) -> Any:
    """DistributedDataParallel around ``model`` (its parameters start as rank 0's)."""
    from torch.nn.parallel import DistributedDataParallel

    init(device)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def take_main_weights(model: Any) -> None:
    """Parameters and buffers (BatchNorm's running statistics too) as rank 0 has them, on every rank."""
    if not active():
        return
    import torch.distributed as dist

    for tensor in model.state_dict().values():
        dist.broadcast(tensor, 0)


def shares(batches: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any, float]]:
    """This rank's part of each global batch (inputs, labels) with its loss weight; all of it, weight 1, in one
    process. A last batch smaller than the world is skipped: every rank must take part in every step. So is a last
    batch of one image after larger ones (a training set one more than a multiple of the batch size): BatchNorm in
    training cannot normalise one value per channel, which is what an ImageNet-stem model's 1×1 maps at 32×32 hold,
    and torchvision's ResNet-18 on 65 images stopped with "Expected more than 1 value per channel when training"."""
    largest = 0
    for inputs, labels in batches:
        largest = max(largest, len(labels))
        if len(labels) == 1 < largest:
            continue
        if not active():
            yield inputs, labels, 1.0
        elif len(labels) >= world_size():
            own, weight = part(len(labels))
            yield inputs[own], labels[own], weight


def part(count: int) -> tuple[slice, float]:
    """This rank's share of a global batch of ``count`` samples (every W-th, from its rank) and its loss weight,
    W * own / count: DDP averages the ranks' gradients, so the weighted means add up to the batch's mean."""
    own = len(range(rank(), count, world_size()))
    return slice(rank(), None, world_size()), world_size() * own / count


@contextmanager
def synced_batchnorm(model: Any) -> Iterator[None]:
    """While training under torch.distributed: BatchNorm layers normalise with the statistics of the whole global
    batch (every rank's share), as one process does; their running statistics too. torch's SyncBatchNorm runs on
    GPUs only, so this sums the per-channel moments with a differentiable all_reduce (gloo or NCCL). It patches
    the layers' forward, not their class: pruning's dependency graph and the checkpoint keep the same modules."""
    from torch import nn

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if active() else []
    for layer in layers:
        layer.forward = _synced_forward.__get__(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _synced_forward(layer: Any, inputs: Any) -> Any:
    import torch

    if not layer.training:
        return type(layer).forward(layer, inputs)
    dims = [0, *range(2, inputs.dim())]
    shape = [1, -1] + [1] * (inputs.dim() - 2)
    wide = inputs.double()  # E[x^2] - E[x]^2 without float32's cancellation
    count = torch.full((1,), inputs.numel() / inputs.shape[1], dtype=torch.float64, device=inputs.device)
    moments = _all_reduce_class().apply(torch.cat([wide.sum(dims), (wide * wide).sum(dims), count]))
    channels = inputs.shape[1]
    n = moments[-1]
    mean = moments[:channels] / n
    var = (moments[channels:2 * channels] / n - mean * mean).clamp_min(0)
    out = ((wide - mean.view(shape)) * torch.rsqrt(var + layer.eps).view(shape)).to(inputs.dtype)
    if layer.affine:
        out = out * layer.weight.view(shape) + layer.bias.view(shape)
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked += 1
            factor = layer.momentum if layer.momentum is not None else 1.0 / float(layer.num_batches_tracked)
            layer.running_mean.mul_(1 - factor).add_(factor * mean.to(layer.running_mean.dtype))
            unbiased = var * n / (n - 1).clamp_min(1)
            layer.running_var.mul_(1 - factor).add_(factor * unbiased.to(layer.running_var.dtype))
    return out


@functools.cache
def _all_reduce_class() -> Any:
    import torch
    import torch.distributed as dist

    class AllReduce(torch.autograd.Function):
        """Sum over the ranks, forward and backward (each rank's loss depends on every rank's inputs)."""

        @staticmethod
        def forward(ctx: Any, tensor: Any) -> Any:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            return tensor

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            grad = grad.clone()
            dist.all_reduce(grad)
            return grad

    return AllReduce


def launch(nproc: int, args: Sequence[str], output_to_stderr: bool = False) -> int:
    """``[train] nproc = N`` outside torchrun: run this command again as N workers of ``torch.distributed.run``
    (one machine, a free port); their exit code is this one's. ``output_to_stderr``: when this process prints the
    result itself, the workers' output must not mix into its stdout (a --json document)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "edgekit.host.cli", *args]
    stdout = sys.stderr.fileno() if output_to_stderr else None
    return subprocess.run(command, preexec_fn=_die_with_parent, stdout=stdout).returncode


def _die_with_parent() -> None:
    """In the launcher's child: SIGTERM when this process dies (killed, even by SIGKILL), so torch.distributed.run
    stops its workers instead of training on as orphans."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the workers end with their rendezvous instead
        pass
