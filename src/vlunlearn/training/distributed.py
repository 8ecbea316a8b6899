"""Data parallelism on PyTorch's own engine (``torch.distributed``), for ``torchrun``.

Every rank builds the same global batch (batches depend only on seed and step), encodes its
contiguous share of it, and :func:`data_parallel` all-gathers the embeddings *with
gradients*, so that every rank computes every loss over the whole global batch: contrastive
losses see all the negatives, and each method's batch-level terms (partner captions,
similarity matrices) are exactly the single-process ones. After ``backward`` the loop
averages the gradients over ranks (:func:`average_gradients`), which is what
``DistributedDataParallel`` does; the wrapper itself is not used because the objectives call
``encode_input``/``encode_text`` directly, not only ``forward``. The all-gather's backward
sums the gradients of the ``world`` identical losses, and the average divides them again, so
a run on N ranks takes the same steps as one process with the same global batch (up to
floating-point summation order). Rank 0 alone writes checkpoints, results and reports.

Run ``torchrun --nproc-per-node N -m vlunlearn unlearn ...``; the backend is NCCL on CUDA and
gloo on CPU. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment. Returns whether
    this is a multi-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _shard_sizes(n: int, world: int) -> list[int]:
    return [n // world + (1 if rank < n % world else 0) for rank in range(world)]


def _gather(local: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``local`` ``(sizes[rank], ...)`` in rank order -> ``(sum(sizes), ...)``."""
    padding = max(sizes) - local.shape[0]
    if padding:  # all_gather needs equal shapes
        local = F.pad(local, (0, 0) * (local.ndim - 1) + (0, padding))
    if local.requires_grad:
        parts = torch.distributed.nn.functional.all_gather(local)
    else:
        parts = [torch.empty_like(local) for _ in sizes]
        dist.all_gather(parts, local.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def data_parallel(fn: Callable[..., Tensor | tuple[Tensor, ...]], *inputs: Tensor):
    """``fn(*inputs)`` for a whole batch, computed in shards across ranks.

    Each rank applies ``fn`` to its contiguous slice (dim 0) of every input, and the outputs
    (a tensor or a tuple of tensors, batch first) are all-gathered with gradients, so every
    rank returns what ``fn(*inputs)`` returns in a single process. Single process: exactly
    ``fn(*inputs)``.
    """
    if not is_distributed():
        return fn(*inputs)
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = _shard_sizes(inputs[0].shape[0], world)
    start = sum(sizes[:rank])
    local = fn(*(x[start : start + sizes[rank]] for x in inputs))
    if isinstance(local, tuple):
        return tuple(_gather(output, sizes) for output in local)
    return _gather(local, sizes)


def average_gradients(model: nn.Module) -> None:
    """Average the gradients of ``model``'s trainable parameters over ranks, in one flat buffer.

    A parameter without a gradient on this rank contributes zeros, so every rank takes part
    in the same collective."""
    if not is_distributed():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for param, grad in zip(params, grads):
        param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()
