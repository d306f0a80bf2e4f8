"""Process groups from torchrun's environment, and the two sub-group dimensions.

Rank layout (world rank = branch * ulysses + shard): the K ranks of one CFG branch are
neighbours, so the Ulysses all-to-alls, which move the most bytes (four per block), stay
between adjacent GPUs; CFG groups pair rank i with rank i + K and exchange one model output per
step. Single node: ``torchrun --nproc-per-node N``; several nodes: torchrun's usual
``--nnodes --node-rank --rdzv-endpoint`` flags, nothing else changes here.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ParallelConfig

logger = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 600.0  # a collective waits this long for a silent peer before failing


@dataclass(frozen=True, eq=False)
class Mesh:
    """This process's place in a ``cfg x ulysses`` run: its world rank, its CFG branch
    (``cfg_rank``: 0 unconditional, 1 conditional) and its video-token shard (``ulysses_rank``).
    A group is None where its dimension has size 1."""

    config: ParallelConfig
    rank: int
    cfg_group: dist.ProcessGroup | None
    ulysses_group: dist.ProcessGroup | None

    @property
    def cfg_rank(self) -> int:
        return self.rank // self.config.ulysses

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.config.ulysses

    @property
    def is_first(self) -> bool:
        """Rank 0: the one that logs progress, decodes and writes outputs."""
        return self.rank == 0


def env_rank() -> dict[str, str]:
    """torchrun's variables; ``ValueError`` naming the missing ones when not launched by it."""
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise ValueError(f"--parallel needs torchrun's environment; {', '.join(missing)} not set: "
                         "launch with torchrun --nproc-per-node N -m cogvideox_core generate ...")
    return {k: os.environ[k] for k in ENV_KEYS}


def init_from_env(config: ParallelConfig, device_type: str = "cpu",
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Mesh, torch.device]:
    """Join torchrun's process group and build the mesh of ``config``; returns it with this
    rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    config.check_world(int(env_rank()["WORLD_SIZE"]))
    device = join_from_env(device_type, timeout_s)
    return make_mesh(config, timeout_s), device


def join_from_env(device_type: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join torchrun's process group (NCCL for ``device_type`` "cuda", else gloo; a collective
    waits ``timeout_s`` for a silent peer) and return this rank's device."""
    env = env_rank()
    device = torch.device("cpu")
    if device_type == "cuda":
        device = torch.device("cuda", int(env["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return device


def make_mesh(config: ParallelConfig, timeout_s: float = DEFAULT_TIMEOUT_S) -> Mesh:
    """The CFG and Ulysses sub-groups of the initialised world (every rank calls this, in the
    same order: ``new_group`` is collective)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    config.check_world(world)
    k, timeout = config.ulysses, datetime.timedelta(seconds=timeout_s)
    ulysses_group = cfg_group = None
    if k > 1:  # branches: ranks [b*K, ..., b*K + K-1]
        for b in range(config.cfg):
            group = dist.new_group(list(range(b * k, b * k + k)), timeout=timeout)
            ulysses_group = group if rank // k == b else ulysses_group
    if config.cfg > 1:  # pairs: ranks {s, s + K}
        for s in range(k):
            group = dist.new_group([s, s + k], timeout=timeout)
            cfg_group = group if rank % k == s else cfg_group
    mesh = Mesh(config, rank, cfg_group, ulysses_group)
    logger.debug("rank %d: cfg branch %d, ulysses shard %d of %s", rank, mesh.cfg_rank,
                 mesh.ulysses_rank, config)
    return mesh


def close() -> None:
    """Leave the process group (closes its connections: peers blocked on this rank fail fast)."""
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Mesh", "ENV_KEYS", "DEFAULT_TIMEOUT_S", "env_rank", "init_from_env", "join_from_env", "make_mesh", "close"]
