"""Training stages under PyTorch's own distributed engine (``torch.distributed``, started by ``torchrun``).

edgekit does not invent a launcher: under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the
training loop wraps the model in DistributedDataParallel and reads its shard through a DistributedSampler;
``[train] nproc = N`` starts ``torch.distributed.run`` itself. NCCL on GPUs, gloo on CPUs. Rank 0 alone
evaluates, writes checkpoints and the stage cache; the other ranks wait for it at a barrier and then hold
rank 0's weights. The global batch is ``[train] batch_size`` whatever the world size (each rank takes its
share), so the learning-rate schedule and the result do not depend on how many processes ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Sequence

import numpy as np


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


def shard(length: int, seed: int, epoch: int) -> np.ndarray:
    """This rank's sample indices for an epoch: torch's DistributedSampler (shuffled by seed and epoch, padded
    so every rank takes the same number of steps)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(length), num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64)


def rank_batch(batch_size: int) -> int:
    """Each rank's share of the global batch."""
    return max(1, batch_size // world_size())


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
