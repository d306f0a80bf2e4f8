"""The state every step cache keeps: per CFG branch, the current call's timestep, counts.

A step cache is a :class:`~cogvideox_core.models.transformer.BlockRunner` the transformer's
forward takes as ``blocks``; nothing is patched onto a module. Every model call of a run happens
inside ``with cache.call(branch, t):`` with ``branch`` "batch" ([uncond, cond] in one call),
"cond" or "uncond" (sequential CFG) and ``t`` the call's timestep, so that sequential CFG keeps
the branches apart and timestep-gated methods see the timestep.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..ops import AttentionFn
from .transformer import Rope

# (x, t) -> (uncond, cond) raw model outputs of one guided step
PairFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
CallFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x, t) -> the cond branch's output


class StepCache:
    """The shared part: per-branch state, the run's call count, evaluation counts (of ``unit``)
    and a ``history`` of (branch, computed everything) per call."""

    method = ""
    unit = "transformer block evaluations"

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, steps: int) -> None:
        """Forget everything before a generation of ``steps`` calls per branch."""
        self.steps = steps
        self.computed = self.total = 0
        self.history: list[tuple[str, bool]] = []
        self._states: dict[str, dict[str, Any]] = {}
        self._branch, self.timestep = "all", -1

    @contextmanager
    def branch(self, name: str) -> Iterator[None]:
        """Calls inside use (and update) the state of CFG branch ``name``."""
        previous, self._branch = self._branch, name
        try:
            yield
        finally:
            self._branch = previous

    @contextmanager
    def call(self, name: str, t: int) -> Iterator[None]:
        """One model call of CFG branch ``name`` at timestep ``t``."""
        self.timestep = int(t)
        with self.branch(name):
            yield

    def guide(self, pair: PairFn, cond_only: CallFn) -> PairFn:
        """The guided step's (uncond, cond) outputs: ``pair`` unless the method approximates a
        branch (FasterCache); ``cond_only`` is the conditional call alone."""
        return pair

    def _state(self) -> dict[str, Any]:
        return self._states.setdefault(self._branch, {})

    def _count(self, ran: int, total: int, computed: bool) -> None:
        self.computed += ran
        self.total += total
        self.history.append((self._branch, computed))

    def held_bytes(self) -> int:
        """Bytes the cache's tensors keep alive now (its extra memory)."""
        return _tensor_bytes(self._states)

    def summary(self) -> str:
        return (f"step cache {self.method}: {self.computed} of {self.total} {self.unit} ran; "
                f"held {self.held_bytes() / 2**20:.1f} MiB")

    def run(self, blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
            rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _tensor_bytes(value: Any) -> int:
    """Bytes of the distinct storages of the tensors in nested dicts, lists and tuples: what they
    keep alive (a view of a larger tensor counts the whole of it)."""
    seen: dict[int, int] = {}

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            storage = v.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    walk(value)
    return sum(seen.values())


__all__ = ["StepCache", "PairFn", "CallFn"]
