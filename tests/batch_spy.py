"""A spy on ``sample_rows`` of a batch module: the number of videos each sampling call took."""
from __future__ import annotations

from types import ModuleType

import pytest


def spy_sample_rows(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[int]:
    """Wrap ``module.sample_rows`` (``cogvideox_core.generation.batch``, or the pack's copy of it
    when imported as a ComfyUI package); returns the list it appends each call's row count to."""
    sizes: list[int] = []
    real = module.sample_rows

    def spy(models, request, runtime, plan, cond, uncond, seeds, callback=None, hooks=None):
        sizes.append(len(seeds))
        assert cond.shape[0] == len(seeds) and (uncond is None or uncond.shape[0] == len(seeds))
        return real(models, request, runtime, plan, cond, uncond, seeds, callback, hooks)

    monkeypatch.setattr(module, "sample_rows", spy)
    return sizes
