"""Start N local processes the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT set; one gloo or NCCL group), for the tests and benchmarks: ``run_local(fn, 4, *args)``
runs ``fn(*args)`` in 4 spawned processes and returns their results in rank order.

``fn`` must be importable (a module-level function); results travel back through files
(``torch.save``); a rank's exception comes back as :class:`RankFailure` text, so the caller
sees every rank's outcome, and ranks still running at ``timeout_s`` are killed.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankFailure:
    """What a rank raised: the exception's type name, message and traceback."""

    kind: str
    message: str
    trace: str


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, out: str, threads: int, fn: Callable[..., Any],
           args: tuple[Any, ...]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        result: Any = fn(*args)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        result = RankFailure(type(e).__name__, str(e), traceback.format_exc())
    torch.save(result, Path(out) / f"rank{rank}.pt")


def run_local(fn: Callable[..., Any], world: int, *args: Any, timeout_s: float = 300.0,
              threads: int = 1) -> list[Any]:
    """``fn(*args)``'s result (or :class:`RankFailure`) of each of ``world`` spawned ranks."""
    if world < 1:
        raise ValueError(f"world={world}: must be at least 1")
    with tempfile.TemporaryDirectory(prefix="cogvideox-parallel-") as out:
        ctx = mp.get_context("spawn")
        port = free_port()
        procs = [ctx.Process(target=_child, args=(r, world, port, out, threads, fn, args), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        _join(procs, timeout_s)
        return [_result(Path(out) / f"rank{r}.pt", r, p) for r, p in enumerate(procs)]


def _join(procs: list[Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            logger.error("rank process %d still running after %.0f s: killed", p.pid, timeout_s)
            p.kill()
            p.join()


def _result(path: Path, rank: int, proc: Any) -> Any:
    if not path.exists():
        return RankFailure("Exited", f"rank {rank} wrote no result (exit code {proc.exitcode})", "")
    return torch.load(path, weights_only=False)


__all__ = ["RankFailure", "free_port", "run_local"]
