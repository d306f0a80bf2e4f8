"""The ``demo`` command's work: a tiny random model of a real family (:mod:`cogvideox_core.tiny`)
through the whole chain, prompt -> sampling -> decode -> mp4."""
from __future__ import annotations

import time
from pathlib import Path

from ..families import get_family
from ..generation.pipeline import GenerateRequest, generate
from ..runtime import TorchRuntime
from ..tiny import demo_inputs, random_models
from ..video_io import write_frames


def run_demo(out: str | Path = "cogvideox_demo.mp4", family: str = "5b", frames: int = 25,
             height: int = 96, width: int = 160, steps: int = 20, seed: int = 0,
             show_progress: bool = True, context: object | None = None) -> dict[str, object]:
    """Build a tiny random ``family`` model in memory and run the whole chain: prompt,
    sampling, decode, mp4 (or ``.safetensors``); ``context``: a
    :class:`~cogvideox_core.sampling.windows.ContextOptions` for long videos. Returns what it did."""

    start = time.monotonic()
    small = get_family(family).fixed_size is not None  # 5B-I2V: a 64x96 table, not 480x720
    models = random_models(family, seed=seed, small_grid=small)
    fam = models.family
    if fam.fixed_size is not None:  # 5B-I2V: the table's size only
        height, width = fam.fixed_size
    request = GenerateRequest(prompt="A panda playing a guitar in a bamboo forest, sunlight",
                              inputs=demo_inputs(fam, frames, height, width), frames=frames,
                              height=height, width=width, steps=steps, seed=seed,
                              context=context)  # type: ignore[arg-type]
    video = generate(models, request, TorchRuntime(device="cpu", show_progress=show_progress))
    path = write_frames(video, Path(out), fam.fps)
    params = sum(p.numel() for p in models.transformer.parameters())
    return {"family": fam.name, "transformer_params": params, "frames": video.shape[0],
            "height": video.shape[1], "width": video.shape[2], "steps": steps,
            "sampler": fam.recommended_sampler, "fps": fam.fps, "out": str(path),
            "seconds": round(time.monotonic() - start, 2)}


__all__ = ["run_demo"]
