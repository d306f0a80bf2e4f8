"""``generate`` with many prompts and seeds: one job, one output per prompt and seed.

``--prompt-list FILE`` (one prompt per non-empty line, ``--prefix`` joined before each) or
``--prompt``, times ``--seeds 1,2,3`` or ``--seed N --count K``. The outputs lie beside ``--out``
and are named ``OUT-<prompt number from 1, 3 digits>-<seed>.<ext>`` (``clips-001-42.mp4``); the
manifest ``OUT.json`` lists {prompt, seed, file, seconds} of every video made and the shared
settings, rewritten after each video, so an interrupt keeps every finished video and a manifest
that says which. No output (or manifest) that exists is replaced without ``--overwrite``: all
names are judged before any model loads.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from . import preflight

if TYPE_CHECKING:
    from ..generation.batch import BatchItem, FinishedVideo

logger = logging.getLogger(__name__)

MAX_VIDEOS = 100_000


def add_batch_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("batch", "many prompts and seeds in one run: one output per prompt and seed, "
                             "named OUT-<prompt number>-<seed>.<ext>, and a manifest OUT.json")
    g.add_argument("--prompt-list", help="text file, one prompt per non-empty line (UTF-8); each makes its "
                   "own videos (replaces --prompt)")
    g.add_argument("--prefix", default="", help="text put before every prompt (with a space)")
    g.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,3: one video per prompt and seed")
    g.add_argument("--count", type=int, help="videos per prompt, seeds --seed, --seed + 1, ...")
    g.add_argument("--batch-size", type=int, help="at most this many videos sampled together (default: "
                   "as many as the device's free memory holds)")
    g.add_argument("--overwrite", action="store_true", help="replace outputs and a manifest that exist "
                   "(default: refuse before anything runs)")


def is_batch(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for a batch job (any of the batch flags)."""
    return any(getattr(args, name, None) is not None for name in ("prompt_list", "seeds", "count"))


def check_flags(args: argparse.Namespace) -> None:
    """The batch flags against each other and the rest of ``generate``'s."""
    if args.prompt_list is not None and args.prompt is not None:
        raise ValueError("--prompt with --prompt-list: give one of them (--prefix adds text to every line)")
    if args.prompts_file is not None:
        raise ValueError(f"--prompts-file {args.prompts_file} with batch flags: --prompts-file gives the "
                         "chunks of one chained video; use --prompt-list for one video per prompt")
    if args.extend_chunks != 1:
        raise ValueError(f"--extend-chunks {args.extend_chunks} with batch flags: chained extension makes "
                         "one video a run; run it once per prompt")
    if args.seeds is not None and args.count is not None:
        raise ValueError("--seeds with --count: give the seeds, or --seed N --count K")
    if args.prefix and args.prompt_list is None:
        raise ValueError("--prefix without --prompt-list: put the text in --prompt")
    for name in ("count", "batch_size"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= MAX_VIDEOS:
            raise ValueError(f"{preflight.flag(name)} {value}: must be in 1..{MAX_VIDEOS}")


def parse_seeds(args: argparse.Namespace) -> list[int]:
    """``--seeds`` (comma-separated), else ``--seed`` .. ``--seed + --count - 1``, else [``--seed``]."""
    if args.seeds is None:
        return [args.seed + i for i in range(args.count or 1)]
    seeds = []
    for part in args.seeds.split(","):
        try:
            seeds.append(int(part.strip()))
        except ValueError:
            raise ValueError(f"--seeds {args.seeds}: {part.strip()!r} is not a whole number; give "
                             "comma-separated seeds like 1,2,3") from None
    return seeds


def job_items(args: argparse.Namespace) -> list[BatchItem]:
    """The job's videos: every prompt (the prefix joined) with every seed, prompt by prompt."""
    from ..generation.batch import batch_items

    if args.prompt_list is not None:
        prompts = preflight.read_prompt_lines("prompt_list", args.prompt_list)
    elif args.prompt is not None:
        prompts = [args.prompt]
    else:
        raise ValueError("--prompt is missing: give --prompt TEXT or --prompt-list FILE")
    try:
        items = batch_items(prompts, parse_seeds(args), args.prefix)
    except ValueError as e:
        raise ValueError(f"{'--seeds ' + args.seeds if args.seeds else '--seed/--count'}: {e}") from None
    if len(items) > MAX_VIDEOS:
        raise ValueError(f"{len(items)} videos ({len(prompts)} prompts x {len(items) // len(prompts)} seeds): "
                         f"at most {MAX_VIDEOS} a run")
    return items


def output_path(out: Path, item: BatchItem) -> Path:
    """``OUT-<prompt number from 1, 3 digits>-<seed>.<ext>`` beside ``out``."""
    return out.with_name(f"{out.stem}-{item.index + 1:03d}-{item.seed}{out.suffix}")


def manifest_path(out: Path) -> Path:
    return out.with_suffix(".json")


def check_outputs(args: argparse.Namespace, out: Path, items: Sequence[BatchItem]) -> None:
    """Refuse, before anything runs, outputs that exist (unless ``--overwrite``) or that are an
    input of the run."""
    paths = [output_path(out, item) for item in items] + [manifest_path(out)]
    for path in paths:
        preflight.check_not_input(args, path)
    existing = [p for p in paths if p.exists()]
    if existing and not args.overwrite:
        shown = ", ".join(p.name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise ValueError(f"--out {args.out}: {len(existing)} of the {len(paths)} files this run writes "
                         f"exist ({shown}): give --overwrite to replace them, or another --out")


class Manifest:
    """``OUT.json``: the shared settings and the videos made so far, rewritten (atomically)
    after each video; ``complete`` turns true when the job ends."""

    def __init__(self, path: Path, settings: dict[str, Any], planned: int) -> None:
        self.path, self.settings, self.planned = path, settings, planned
        self.videos: list[dict[str, Any]] = []

    def add(self, video: FinishedVideo, file: Path) -> None:
        self.videos.append({"prompt": video.item.prompt, "seed": video.item.seed, "file": file.name,
                            "seconds": video.seconds})
        self.write(complete=False)

    def write(self, complete: bool) -> None:
        data = {"settings": self.settings, "planned": self.planned, "complete": complete,
                "videos": self.videos}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def settings(args: argparse.Namespace, family: str, plan: Any) -> dict[str, Any]:
    """The settings every video of the job shares, for the manifest."""
    keys = ("model", "vae", "text_encoder", "negative", "prefix", "steps", "cfg", "dynamic_cfg", "sampler",
            "dtype", "weight_dtype", "cache", "image", "end_image", "video", "mask", "control", "denoise")
    chosen = {k: getattr(args, k, None) for k in keys}
    return {"family": family, "frames": plan.frames, "height": plan.height, "width": plan.width,
            **{k: v for k, v in chosen.items() if v not in (None, "", [])}}


def run_job(args: argparse.Namespace, models: Any, request: Any, plan: Any, runtime: Any, out: Path,
            items: Sequence[BatchItem]) -> int:
    """Make every video, writing each (and the manifest) as soon as it is decoded. An interrupt
    ends the job with :class:`~cogvideox_core.errors.InterruptedKeeping` naming what was kept."""
    from ..errors import Interrupted, InterruptedKeeping
    from ..generation.batch import generate_batch
    from ..video_io import write_frames

    manifest = Manifest(manifest_path(out), settings(args, models.family.name, plan), len(items))

    def save(video: FinishedVideo) -> None:
        path = write_frames(video.frames, output_path(out, video.item), models.family.fps)
        manifest.add(video, path)
        logger.info("wrote %s (%s, seed %d)", path, video.item.prompt[:60], video.item.seed)

    try:
        made = generate_batch(models, request, items, save, runtime, max_batch=args.batch_size)
    except Interrupted as e:
        if manifest.videos:
            manifest.write(complete=False)
            raise InterruptedKeeping(f"{e} after {len(manifest.videos)} of {len(items)} videos: those are "
                                     f"kept, listed in {manifest.path}") from None
        raise
    manifest.write(complete=True)
    return made


__all__ = ["add_batch_flags", "is_batch", "check_flags", "parse_seeds", "job_items", "output_path",
           "manifest_path", "check_outputs", "Manifest", "settings", "run_job"]
