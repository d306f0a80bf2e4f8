"""Long videos on the trained tiny models: context-window weightings side by side.

Each setting generates the same prompt-seed pairs at ``--frames`` (default 65, four times the
trained 17) in 17-frame windows and reads every video back (:mod:`.analyse`): the share with one
shape in every frame and no step longer than the shape is wide (``one_object``), with no centroid
step over 4 px (``smooth``: the world moves 1 px a frame), the same while the shape is inside
the frame (``smooth_inside``: steps while it crosses an edge of the torus left out, so a jump at a
window seam shows, one at a crossing does not), moving the prompt's way, in its colour; and the
largest step of each video.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.tiny_world.long_video [--weights pyramid,causal]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from cogvideox_core.generation.pipeline import GenerateRequest, Models, generate
from cogvideox_core.sampling.windows import ContextOptions

from .analyse import Analysis, analyse, largest_step, largest_step_inside
from .models import DATA, load_models
from .world import FRAMES, HALF_SIZE, HEIGHT, WIDTH, parse_caption

logger = logging.getLogger(__name__)

PROMPTS = ("a red square moving right on a white background", "a blue circle moving left on a white background",
           "a green square moving down on a white background", "a red circle moving up on a white background")
SMOOTH_PX = 4.0  # the world moves 1 px a frame
JUMP_PX = 20.0  # the shape's width: a longer step is a second shape or a teleport
MIN_COVERAGE = 0.9
INSIDE_MARGIN = HALF_SIZE + SMOOTH_PX  # px from every edge: the shape whole in the frame, with room


def moves_smoothly(found: Analysis, max_step: float = SMOOTH_PX, inside: tuple[int, int] | None = None) -> bool:
    """A shape in at least :data:`MIN_COVERAGE` of the frames and no centroid step over
    ``max_step`` px (what "smooth" means in every tiny-world check); with ``inside`` (the
    frame's width, height), only the steps with the shape :data:`INSIDE_MARGIN` inside the frame
    count (:func:`~.analyse.largest_step_inside`)."""
    step = largest_step(found.track) if inside is None else largest_step_inside(found.track, *inside, INSIDE_MARGIN)
    return found.coverage >= MIN_COVERAGE and step <= max_step


def judge(video: torch.Tensor, prompt: str) -> dict[str, object]:
    """What one long video shows against its prompt."""
    found, want = analyse(video), parse_caption(prompt)
    step = largest_step(found.track)
    inside = largest_step_inside(found.track, video.shape[2], video.shape[1], INSIDE_MARGIN)
    covered = found.coverage >= MIN_COVERAGE  # each check as moves_smoothly makes it
    return {"one_object": covered and step <= JUMP_PX, "smooth": covered and step <= SMOOTH_PX,
            "smooth_inside": covered and inside <= SMOOTH_PX,
            "direction": found.direction == want.direction, "colour": found.colour == want.colour,
            "largest_step": round(step, 2), "largest_step_inside": round(inside, 2)}


def long_rates(models: Models, context: ContextOptions, frames: int, seeds: int = 2, steps: int = 20,
               cfg: float = 6.0, first_seed: int = 0) -> dict[str, object]:
    """The shares of :func:`judge`'s checks over ``seeds`` x :data:`PROMPTS` videos of ``frames``
    frames made in ``context``'s windows, and each video's largest step (px)."""
    rows = []
    for seed in range(first_seed, first_seed + seeds):
        for prompt in PROMPTS:
            request = GenerateRequest(prompt=prompt, frames=frames, height=HEIGHT, width=WIDTH, steps=steps,
                                      cfg=cfg, seed=seed, context=context)
            rows.append(judge(generate(models, request), prompt))
            logger.debug("%s seed %d: %s", prompt, seed, rows[-1])
    rates: dict[str, object] = {k: sum(bool(r[k]) for r in rows) / len(rows)
                                for k in ("one_object", "smooth", "smooth_inside", "direction", "colour")}
    rates["largest_step"] = [r["largest_step"] for r in rows]
    rates["largest_step_inside"] = [r["largest_step_inside"] for r in rows]
    return rates


def compare(kind: str, frames: int, overlap: int, weights: list[str], schedule: str, seeds: int,
            steps: int, cfg: float, root: Path = DATA, first_seed: int = 0) -> dict[str, dict]:
    """Per weighting: :func:`long_rates` and the minutes it took."""
    models = load_models(kind, root)
    out = {}
    for name in weights:
        start = time.monotonic()
        context = ContextOptions(FRAMES, overlap, schedule=schedule, weights=name)
        out[name] = {**long_rates(models, context, frames, seeds, steps, cfg, first_seed),
                     "minutes": round((time.monotonic() - start) / 60, 2)}
        logger.info("%s %s, %d frames in %d/%d: %s", name, schedule, frames, FRAMES, overlap, out[name])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="t2v", choices=("t2v",))
    p.add_argument("--frames", type=int, default=4 * (FRAMES - 1) + 1)
    p.add_argument("--overlap", type=int, default=16, help="window overlap in pixel frames (the demo's)")
    p.add_argument("--weights", default="pyramid,flat,causal")
    p.add_argument("--schedule", default="static")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (4 prompts)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the seeds are first-seed, first-seed+1, ... (the 4x test's are 0 and 1)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=6.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", type=Path, default=DATA, help="the models' folder (default: the shipped ones)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    result = compare(args.kind, args.frames, args.overlap, args.weights.split(","), args.schedule, args.seeds,
                     args.steps, args.cfg, args.root, args.first_seed)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
