"""Data-parallel training on ``torch.distributed`` (one process per device, launched by
``torchrun``): gloo on CPU, NCCL on CUDA, rank and world size from the standard environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

The Rust loop reaches the collectives through this module's Python callables rather than
through libtorch's c10d from C++: tch exposes no c10d bindings, while the Python API is what
``torchrun`` sets up and what users already configure (backends, timeouts, process groups). The
cost is one Python call per network per step, negligible next to the step.

Semantics (DDP's): every rank starts from rank 0's weights (broadcast); each reads a disjoint
shard of every global batch (see ``src/data/loader.rs``); after each backward pass the
gradients of G, D and F are averaged across the ranks, one all-reduce of one flat bucket per
network per step, before the optimiser steps — so the ranks stay identical. The all-reduce
follows the backward pass instead of overlapping with it (the Rust loop calls backward as one
operation). QS-Attn selection and PatchNCE negatives stay per image: nothing else is exchanged.
Patch ids and flip coins come from the shared seed, so two ranks with batch B train exactly as
one process with batch 2B.
"""
from __future__ import annotations

import atexit
import datetime
import os
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["launched_by_torchrun", "setup", "GradientAverager", "broadcast_states"]


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process run (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str, timeout_s: float) -> Tuple[int, int, str]:
    """Joins the process group (unless already joined): gloo for ``device="cpu"``, NCCL for
    CUDA with one device per process (``cuda:<LOCAL_RANK>``). Collectives that wait longer than
    ``timeout_s`` fail instead of hanging. A group joined here is left again at interpreter exit
    (unless ``destroy_process_group`` was called before). Returns ``(rank, world_size, device)``."""
    cuda = str(device).startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(f"distributed training needs the torchrun environment; missing {', '.join(missing)} "
                               "(launch with: torchrun --nproc_per_node=N -m qs_attn train ...)")
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(_leave_process_group)
    return dist.get_rank(), dist.get_world_size(), str(device)


def _leave_process_group() -> None:
    """Destroys the process group while the interpreter is still whole. Left to the
    interpreter's finalisation instead, gloo's worker threads can release their last
    collective's tensors after Python has started tearing down, which aborts the process
    ("terminate called without an active exception") in a run that had succeeded."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _collective_failed(what: str, error: Exception) -> RuntimeError:
    rank, world = dist.get_rank(), dist.get_world_size()
    return RuntimeError(f"qs_attn: rank {rank} of {world}: {what} failed ({type(error).__name__}: {error}); "
                        "another process probably failed or was killed, or the collective timed out")


class GradientAverager:
    """``averager(net, grads)``: replaces ``grads`` (the gradients of one network) by their mean
    over the ranks, in place, with one all-reduce of a flat bucket."""

    def __call__(self, net: str, grads: List[torch.Tensor]) -> None:
        if not grads:
            return
        with torch.no_grad():
            flat = _flatten_dense_tensors(grads)
            try:
                dist.all_reduce(flat)
            except Exception as e:  # a dead peer or a timeout: say so
                raise _collective_failed(f"averaging the gradients of {net}", e) from e
            flat /= dist.get_world_size()
            for g, mean in zip(grads, _unflatten_dense_tensors(flat, grads)):
                g.copy_(mean)


def broadcast_states(states: Dict[str, Dict[str, torch.Tensor]]) -> None:
    """Copies rank 0's tensors (per network, name → shared tensor) to every rank, in place."""
    with torch.no_grad():
        for net, state in states.items():
            tensors = [t for _, t in sorted(state.items())]
            if not tensors:
                continue
            flat = _flatten_dense_tensors([t.detach() for t in tensors])
            try:
                dist.broadcast(flat, src=0)
            except Exception as e:
                raise _collective_failed(f"broadcasting the weights of {net}", e) from e
            for t, value in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
                t.copy_(value)
