"""The collectives the parallel modes use, with one clear error when a peer is gone and a
count of the bytes each rank hands to them (for the benchmark's communication volume).

Only torch.distributed's own collectives (``all_to_all_single``, ``all_gather``,
``broadcast``, ``all_reduce``): NCCL on CUDA, gloo on CPU. A collective whose peer failed
raises (gloo: the peer's socket closes) or times out after the process group's timeout; both
become :class:`ParallelError` naming this rank, the operation and the group's ranks.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..errors import CogVideoXError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Group = dist.ProcessGroup

# bytes of the tensors this process handed to each kind of collective since the last reset
VOLUME: Counter[str] = Counter()


class ParallelError(CogVideoXError, RuntimeError):
    """A collective failed or timed out: another rank stopped, crashed or hangs. The message
    names this rank, the operation and the ranks it waited for; the failing rank's own log has
    the cause."""


def reset_volume() -> None:
    VOLUME.clear()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _run(name: str, group: Group, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (RuntimeError, OSError) as e:  # gloo/NCCL errors are RuntimeError subclasses
        ranks = dist.get_process_group_ranks(group)
        raise ParallelError(f"rank {dist.get_rank()}: {name} with ranks {ranks} failed: another rank "
                            f"stopped, crashed or did not answer within the process group timeout; "
                            f"that rank's log has the cause ({type(e).__name__}: {e})") from e


def all_to_all(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Chunk i of ``x``'s first dim goes to group rank i; chunk j of the result came from rank j."""
    x = x.contiguous()
    out = torch.empty_like(x)
    VOLUME["all_to_all"] += _nbytes(x)
    _run("all_to_all_single", group, lambda: dist.all_to_all_single(out, x, group=group))
    return out


def all_gather(x: torch.Tensor, group: Group) -> list[torch.Tensor]:
    """Every group rank's ``x`` (same shape everywhere), in group-rank order."""
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    VOLUME["all_gather"] += _nbytes(x)
    _run("all_gather", group, lambda: dist.all_gather(out, x, group=group))
    return out


def broadcast(x: torch.Tensor, src: int, group: Group | None = None) -> torch.Tensor:
    """``x`` of global rank ``src`` on every rank of ``group`` (in place, returned)."""
    group = group or dist.group.WORLD
    if not x.is_contiguous():
        raise ValueError(f"broadcast of a non-contiguous tensor of shape {tuple(x.shape)}")
    VOLUME["broadcast"] += _nbytes(x)
    _run("broadcast", group, lambda: dist.broadcast(x, src=src, group=group))
    return x


def all_max(values: Sequence[int], group: Group | None = None) -> list[int]:
    """Element-wise maximum of small integer vectors over ``group`` (CPU tensor under gloo)."""
    group = group or dist.group.WORLD
    device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
    t = torch.tensor(list(values), dtype=torch.int64, device=device)
    VOLUME["all_reduce"] += _nbytes(t)
    _run("all_reduce", group, lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group))
    return [int(v) for v in t.tolist()]


__all__ = ["ParallelError", "VOLUME", "reset_volume", "all_to_all", "all_gather", "broadcast", "all_max"]
