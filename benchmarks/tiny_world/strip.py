"""The README's frame strip: what ``python -m cogvideox_core demo`` makes, as one PNG.

Row 1: the README's first command (``demo --out demo.mp4``: the tiny text-to-video model,
"a red circle moving right on a white background"), or the mp4 given with ``--mp4``. Row 2
(unless ``--no-inp``): the tiny Fun InP model given the first and last frame of a world clip
(``demo --image start.png --end-image end.png``, "a blue square moving down ..."). Row 3
(unless ``--no-long``): the demo at twice the trained length in context windows
(:data:`LONG_ARGS`), every ``--long-every``-th frame. Every ``--every``-th frame side by side, ``--gap`` px apart (grey: the frames' own background is
white), scaled ``--scale`` x nearest. The PNG is written by imageio-ffmpeg's ffmpeg (no new
dependency). Regenerate after new weights, from the repo root (seconds on the CPU)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.tiny_world.strip
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from cogvideox_core.video_io import frames_to_uint8, read_video

from .world import make_clip, start_range

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "demo_strip.png"
INP_SCENE = ("blue", "square", "down")  # the second row's clip: its first and last frame are given
# row 3: 33 frames (2x the trained 17) in 17-frame windows (the demo's causal weights); at 4x the
# shape does not yet cross the frame's edge smoothly (tests/test_tiny_world_models.py)
LONG_ARGS = ("--frames", "33", "--context-frames", "17")
GAP_GREY = 160  # the gap's grey level: a white gap would vanish between white backgrounds


def run_demo(out: Path, *extra: str) -> Path:
    """``python -m cogvideox_core demo --out out *extra`` from the repo root; ``out``."""
    cmd = [sys.executable, "-m", "cogvideox_core", "demo", "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    logger.info("%s", proc.stdout.strip())
    return out


def strip(frames: np.ndarray, every: int = 4, gap: int = 2, scale: int = 2) -> np.ndarray:
    """Frames 0, every, 2*every ... of ``frames`` [F, H, W, 3] uint8 side by side, ``gap`` px
    of grey between them, each pixel ``scale`` x ``scale``: [H*scale, W', 3] uint8."""
    picked = [np.kron(f, np.ones((scale, scale, 1), dtype=np.uint8)) for f in frames[::every]]
    h = picked[0].shape[0]
    bar = np.full((h, gap, 3), GAP_GREY, dtype=np.uint8)
    parts = [p for f in picked for p in (bar, f)][1:]
    return np.concatenate(parts, axis=1)


def stack(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """``rows`` one above the other, ``gap`` px of grey between (narrower rows padded grey)."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=GAP_GREY) for r in rows]
    bar = np.full((gap, width, 3), GAP_GREY, dtype=np.uint8)
    return np.concatenate([p for r in padded for p in (bar, r)][1:], axis=0)


def write_png(image: np.ndarray, path: Path) -> Path:
    """``image`` [H, W, 3] uint8 as a PNG at ``path``, by ffmpeg."""
    h, w, _ = image.shape
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-i", "-", "-frames:v", "1", "-pix_fmt", "rgb24", str(path)]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(image).tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {path}: {proc.stderr.decode(errors='replace').strip()}")
    return path


def inp_video(folder: Path) -> Path:
    """The demo's Fun InP run on the first and last frame of the :data:`INP_SCENE` clip."""
    colour, shape, direction = INP_SCENE
    (x0, x1), (y0, _y1) = start_range(direction)
    clip = frames_to_uint8(make_clip(colour, shape, direction, ((x0 + x1) / 2, y0)))
    start, end = write_png(clip[0], folder / "start.png"), write_png(clip[-1], folder / "end.png")
    return run_demo(folder / "inp.mp4", "--image", str(start), "--end-image", str(end),
                    "--prompt", f"a {colour} {shape} moving {direction} on a white background")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mp4", type=Path, help="row 1 from this video instead of running the demo")
    p.add_argument("--no-inp", action="store_true", help="no second row (the Fun InP start/end demo)")
    p.add_argument("--no-long", action="store_true", help="no third row (the 33-frame context-window demo)")
    p.add_argument("--every", type=int, default=4, help="every N-th frame (default 4: 5 of 17)")
    p.add_argument("--long-every", type=int, default=4, help="every N-th frame of row 3 (default 4: 9 of 33)")
    p.add_argument("--gap", type=int, default=2)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        videos = [(args.mp4 or run_demo(folder / "demo.mp4"), args.every)]
        if not args.no_inp:
            videos.append((inp_video(folder), args.every))
        if not args.no_long:
            videos.append((run_demo(folder / "long.mp4", *LONG_ARGS), args.long_every))
        rows = [strip(frames_to_uint8(read_video(v)[0]), every, args.gap, args.scale) for v, every in videos]
    path = write_png(stack(rows, args.gap), args.out)
    logger.info("wrote %s (%d row(s), every %d-th frame scaled %dx)", path, len(rows), args.every, args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
