"""Data-parallel replicas of one training run on a multi-core CPU.

Small convolutions scale poorly across the threads of one process: on a 2-core box two 1-thread
processes train ~1.3x more images per second than one 2-thread process (``bench --layouts``). With
``TrainConfig.replicas = R`` one run uses that: the calling process is replica 0 and starts R-1 helper
processes; every replica takes 1/R of each batch, gradients are averaged before each optimizer step
(one all-reduce over a flat buffer), so all replicas hold the same weights at every step. The batch
size, the number of steps and the learning-rate schedule do not change. What does change: BatchNorm
normalises with the statistics of each replica's share of the batch (as in plain PyTorch DDP), and the
running statistics are averaged across replicas before every evaluation.

Only replica 0 logs and runs the epoch hook; evaluation is split between replicas and summed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from .errors import UserError

# A replica that waits longer than this for the others (a crashed helper, a killed parent) gives up.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=300)


def exit_with_parent(parent: int) -> None:
    """Stop this process (a helper or a search worker) when the process that started it is gone,
    instead of running on unseen after its parent was killed with SIGKILL."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _helper(rank: int, world: int, init_file: str, parent: int, train: Callable[..., Any], args: tuple) -> None:
    exit_with_parent(parent)
    # Tensors sent to a spawned process arrive in shared memory, still shared with the parent: fine for
    # the read-only dataset, wrong for a model that both processes would then update. Weights get own copies.
    for module in (a for a in args if isinstance(a, nn.Module)):
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        train(*args, rank=rank)
    except FloatingPointError:  # replica 0 raises the same error to its caller
        pass
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def replica_group(world: int, train: Callable[..., Any], args: tuple) -> Iterator[None]:
    """Start ``world - 1`` helpers running ``train(*args, rank=r)`` and join the calling process to
    their process group as replica 0; on leaving, wait for the helpers (or stop them on an error)."""
    if dist.is_available() and dist.is_initialized():
        raise UserError("replicas > 1 needs its own process group, but torch.distributed is already initialised here")
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked thread pools
    with tempfile.TemporaryDirectory(prefix="replicas-") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        helpers = [ctx.Process(target=_helper, args=(rank, world, init_file, os.getpid(), train, args), daemon=True) for rank in range(1, world)]
        for p in helpers:
            p.start()
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=world, timeout=COLLECTIVE_TIMEOUT)
        ok = False
        try:
            yield
            ok = True
        finally:
            if not ok:  # replica 0 stopped early (pruned, interrupted, failed): the helpers have nothing to wait for
                for p in helpers:
                    p.terminate()
            for p in helpers:
                p.join()
            dist.destroy_process_group()
        failed = [p.exitcode for p in helpers if p.exitcode]
        if failed:
            raise RuntimeError(f"a training replica exited with code {failed[0]}")


def broadcast_weights(model: nn.Module) -> None:
    """Make every replica start from replica 0's parameters and buffers."""
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of all replicas in place: one all-reduce over a flat copy."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(model: nn.Module, world: int) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across replicas."""
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sum of each scalar tensor over replicas (returned as float64 copies)."""
    flat = torch.stack([v.detach().double() for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())


def agree_to_stop(stop: bool) -> bool:
    """Replica 0 tells the others whether training ends after this epoch (its hook pruned it, say)."""
    flag = torch.tensor([1 if stop else 0])
    dist.broadcast(flag, src=0)
    return bool(flag.item())
