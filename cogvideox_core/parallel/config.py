"""What ``--parallel`` asks for: CFG parallel (1 or 2) times Ulysses sequence parallel (K).

``"cfg=2,ulysses=4"`` runs on 8 processes: two CFG branches, each split over 4 ranks by video
tokens. Checks that need the model or the launch (heads divisible by K, world size) are here
too, so a bad combination fails before any process group is made or any weight is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

CFG_DEGREES = (1, 2)


@dataclass(frozen=True)
class ParallelConfig:
    """``cfg``: 2 puts the unconditional and conditional branches on two ranks (1: off).
    ``ulysses``: K ranks share each branch's video tokens (1: off). World size cfg * ulysses."""

    cfg: int = 1
    ulysses: int = 1

    def __post_init__(self) -> None:
        if self.cfg not in CFG_DEGREES:
            raise ValueError(f"parallel cfg={self.cfg}: must be 1 or 2 (two CFG branches at most)")
        if self.ulysses < 1:
            raise ValueError(f"parallel ulysses={self.ulysses}: must be at least 1")

    @property
    def world_size(self) -> int:
        return self.cfg * self.ulysses

    @classmethod
    def parse(cls, text: str) -> "ParallelConfig":
        """``"cfg=2,ulysses=4"``, ``"ulysses=2"``, ``"cfg=2"`` (missing keys are 1)."""
        values: dict[str, int] = {}
        for item in (part.strip() for part in text.split(",")):
            key, sep, raw = (s.strip() for s in item.partition("="))
            if not sep or key not in ("cfg", "ulysses"):
                raise ValueError(f"--parallel {text!r}: {item!r} is not cfg=N or ulysses=N "
                                 "(example: cfg=2,ulysses=4)")
            if key in values:
                raise ValueError(f"--parallel {text!r}: {key} given twice")
            if not raw.isdigit():
                raise ValueError(f"--parallel {text!r}: {key}={raw!r} must be a whole number")
            values[key] = int(raw)
        return cls(**values)

    def __str__(self) -> str:
        return f"cfg={self.cfg},ulysses={self.ulysses}"

    def check_world(self, world_size: int) -> None:
        """``ValueError`` unless ``world_size`` processes are exactly what this config needs."""
        if world_size != self.world_size:
            raise ValueError(f"--parallel {self}: needs cfg * ulysses = {self.world_size} processes, "
                             f"the launch has WORLD_SIZE={world_size} (torchrun --nproc-per-node "
                             f"{self.world_size})")

    def check_heads(self, heads: int, family: str) -> None:
        """``ValueError`` unless the family's attention heads split evenly over the Ulysses ranks."""
        if heads % self.ulysses:
            fits = [k for k in range(1, heads + 1) if heads % k == 0]
            raise ValueError(f"--parallel ulysses={self.ulysses}: the {family} family has {heads} "
                             f"attention heads, which do not divide by {self.ulysses}; ulysses must "
                             f"divide {heads} ({', '.join(map(str, fits))})")


__all__ = ["ParallelConfig", "CFG_DEGREES"]
