"""Long video: colour drift of a chained extension with and without colour matching, and the peak
memory of context-windowed sampling against one window.

1. Drift. A synthetic chain run through the pack's own chain loop
   (:func:`cogvideox_core.long_video.chain.chain`: tail conditioning, colour matching, crossfade) with a
   toy generator in place of the model. The scene is a moving colour pattern whose statistics do
   not change with time. Like a Fun InP model, the toy reproduces the colours of the tail it is
   given (a per-channel affine fit of the tail against the scene) and then drifts: by the end of
   each chunk its colours are off by a fixed gain and offset per RGB channel, ramped in over the
   chunk. Without matching the drift adds up chunk after chunk, as in the CogVideoX-Fun
   reference. Printed per chain: the Oklab distance between the mean colours of the first and
   the last chunk (``colour_difference``; about 0.02 is just noticeable), and at every join the
   seam discontinuity: the largest frame-to-frame change (mean absolute RGB difference) over the
   join, divided by the median frame-to-frame change of the whole video (the scene's own motion;
   1 = no visible seam).

2. Memory. A small real random transformer (5B layout: RoPE, 16 heads x 64, 2 layers) samples
   T2V latents (prompt embeddings given, CFG batched, 2 DDIM steps; no text encoder, no VAE):
   once a video of exactly one window (49 frames, 13 latents) and once a 4x longer video (193
   frames) in context windows of 49 frames overlapping by 16 (and, for scale only, the 193
   frames without windows). Each run is a fresh subprocess
   with the same setup; after setup the process's peak-RSS mark is reset (``/proc/self/
   clear_refs`` = 5) and the peak RSS above that baseline (``VmHWM - VmRSS``) is the run's
   memory. glibc's mmap threshold is pinned at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed
   tensors go back to the system and the RSS peak follows live memory rather than what the
   allocator keeps cached (unpinned, both peaks are about 90 MiB higher and the ratio a little
   higher too). On CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` above the
   baseline. What a windowed run holds beyond one window is the whole video's latent state
   (noise, sample, prediction, blend accumulator), latent-sized, not the transformer's.

Last line: ``RESULT drift_matched_over_unmatched=<r> window_peak_over_single_window=<m>``, r the
first-vs-last chunk colour difference with matching over that without (target <= 0.25), m the
windowed run's peak over the single-window run's (target <= 1.2).

    .venv/bin/python benchmarks/long_video.py
    .venv/bin/python benchmarks/long_video.py --chunks 20 --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cogvideox_core.long_video.colour import colour_difference, colour_stats  # noqa: E402
from cogvideox_core.generation.conditioning import ConditioningInputs  # noqa: E402
from cogvideox_core.long_video.chain import ChainOptions, chain  # noqa: E402
from cogvideox_core.families import get_family  # noqa: E402

GAIN = torch.tensor([0.96, 0.98, 1.0])  # the toy's colour drift per chunk, RGB
OFFSET = torch.tensor([0.03, 0.01, -0.02])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=10, help="chunks in the synthetic chain")
    p.add_argument("--frames", type=int, default=49, help="frames per chunk")
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--strength", type=float, default=1.0, help="colour matching strength")
    p.add_argument("--device", default="cpu", help="device of the memory runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-child", choices=("single", "windowed", "full"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- 1. drift of a synthetic chain -------------------------------------------------------------

def scene(start: int, count: int, height: int = 64, width: int = 96) -> torch.Tensor:
    """Frames [count, H, W, 3] of a slowly moving pattern: whole periods of sines across the
    frame, so its colour statistics do not change with time (only the drift changes them)."""
    t = torch.arange(start, start + count, dtype=torch.float32).view(-1, 1, 1)
    y = (torch.arange(height, dtype=torch.float32) / height).view(1, -1, 1)
    x = (torch.arange(width, dtype=torch.float32) / width).view(1, 1, -1)
    r = 0.5 + 0.2 * torch.sin(2 * math.pi * (2 * x + t / 160))
    g = 0.5 + 0.2 * torch.sin(2 * math.pi * (2 * y - t / 220))
    b = 0.5 + 0.15 * torch.sin(2 * math.pi * (x + y + t / 280))
    return torch.stack(torch.broadcast_tensors(r, g, b), dim=-1)


def affine_fit(tail: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (a, b) with tail ~ a * truth + b (least squares)."""
    x, y = truth.reshape(-1, 3), tail.reshape(-1, 3)
    xm, ym = x.mean(0), y.mean(0)
    a = ((x - xm) * (y - ym)).sum(0) / ((x - xm) ** 2).sum(0)
    return a, ym - a * xm


class ToyGenerator:
    """Chunk k of the chain: the scene at its frames, in the colours of the tail it is given,
    then drifted by GAIN/OFFSET, ramped in from 0 at its first frame to all at its last."""

    def __init__(self, frames: int, overlap: int) -> None:
        self.frames, self.overlap = frames, overlap

    def first(self) -> torch.Tensor:
        return self._drift(scene(0, self.frames))

    def __call__(self, k: int, inputs: ConditioningInputs) -> torch.Tensor:
        start = (k + 1) * (self.frames - self.overlap)  # where chunk k starts in the video
        a, b = affine_fit(inputs.image, scene(start, self.overlap))
        return self._drift(a * scene(start, self.frames) + b)

    def _drift(self, chunk: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, chunk.shape[0]).view(-1, 1, 1, 1)
        return (chunk * (1 + ramp * (GAIN - 1)) + ramp * OFFSET).clamp(0, 1)


def seam_jumps(video: torch.Tensor, frames: int, overlap: int, chunks: int) -> list[float]:
    """Per join: the largest frame-to-frame change over the join / the video's median change."""
    steps = (video[1:] - video[:-1]).abs().mean(dim=(1, 2, 3))  # [F - 1]
    natural = float(steps.median())
    jumps = []
    for j in range(1, chunks):
        first = j * (frames - overlap)  # the join's first overlap frame in the video
        jumps.append(float(steps[first - 1:first + overlap].max()) / natural)
    return jumps


def run_chain(args: argparse.Namespace, strength: float) -> dict[str, object]:
    toy = ToyGenerator(args.frames, args.overlap)
    first = toy.first()
    options = ChainOptions(args.chunks - 1, args.overlap, strength)
    video = chain(get_family("fun-5b-inp"), first, toy, options, colour_stats(first))
    return {"frames": video.shape[0],
            "drift": colour_difference(colour_stats(video[:args.frames]),
                                       colour_stats(video[-args.frames:])),
            "seams": seam_jumps(video, args.frames, args.overlap, args.chunks)}


def _fmt(t: torch.Tensor) -> str:
    return "(" + ", ".join(f"{v:+.2f}" if v < 0.5 else f"{v:.2f}" for v in t.tolist()) + ")"


def drift_report(args: argparse.Namespace) -> float:
    off, on = run_chain(args, 0.0), run_chain(args, args.strength)
    print(f"drift: synthetic chain of {args.chunks} chunks x {args.frames} frames, overlap {args.overlap} "
          f"({on['frames']} frames); toy drift per chunk: gain {_fmt(GAIN)}, offset {_fmt(OFFSET)} (RGB)")
    print(f"  first-vs-last chunk Oklab colour difference: unmatched {off['drift']:.4f}, "
          f"matched (strength {args.strength}) {on['drift']:.4f}")
    print("  seam discontinuity per join (max frame change over the join / median frame change):")
    for j, (a, b) in enumerate(zip(off["seams"], on["seams"]), start=1):  # type: ignore[arg-type]
        print(f"    join {j:2d}: unmatched {a:5.2f}  matched {b:5.2f}")
    print(f"  worst seam: unmatched {max(off['seams']):.2f}, matched {max(on['seams']):.2f}")  # type: ignore[arg-type]
    return on["drift"] / off["drift"]  # type: ignore[operator]


# ---- 2. peak memory of windowed sampling ---------------------------------------------------------

def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def memory_child(kind: str, device: str) -> None:
    """One sampling run in this process; prints {"peak": bytes above the baseline, ...}."""
    from cogvideox_core.sampling.windows import ContextOptions
    from cogvideox_core.tiny import init_random
    from cogvideox_core.generation.pipeline import GenerateRequest, Models, generate_latents
    from cogvideox_core.runtime import TorchRuntime
    from cogvideox_core.models.transformer import CogVideoXTransformer

    family = get_family("5b")
    cfg = dataclasses.replace(family.transformer, num_layers=2, num_heads=16, head_dim=64, text_dim=64)
    family = dataclasses.replace(family, transformer=cfg)
    model = init_random(CogVideoXTransformer(cfg, device=device), 0).eval()
    gen = torch.Generator().manual_seed(1)
    cond, uncond = (torch.randn(1, 226, 64, generator=gen).to(device) for _ in range(2))
    frames = 49 if kind == "single" else 193
    request = GenerateRequest(prompt_embeds=cond, negative_embeds=uncond, frames=frames,
                              height=128, width=192, steps=2, cfg=6.0, sampler="ddim",
                              context=ContextOptions(49, 16) if kind == "windowed" else None)
    runtime = TorchRuntime(device=device, show_progress=False)
    models = Models(model, family)
    start = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        generate_latents(models, request, runtime)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
        base = _status("VmRSS")
        generate_latents(models, request, runtime)
        peak = _status("VmHWM") - base
    print(json.dumps({"peak": peak, "seconds": time.perf_counter() - start}))


def measure(kind: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-child", kind, "--device", args.device,
           "--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors leave the RSS
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory_report(args: argparse.Namespace) -> float:
    method = ("CUDA max_memory_allocated" if args.device.startswith("cuda")
              else "peak RSS (VmHWM reset, mmap threshold 64 KiB)")
    runs = {kind: [measure(kind, args) for _ in range(2)] for kind in ("single", "windowed", "full")}
    peak = {kind: statistics.median(r["peak"] for r in rs) for kind, rs in runs.items()}
    print(f"memory: 5B-layout transformer, 2 layers of 16 heads x 64, 128x192, CFG batched, 2 steps, "
          f"{args.device}; {method} above the baseline, median of 2 subprocesses each")
    for kind, label in (("single", "one window: 49 frames, no windows"),
                        ("windowed", "193 frames in windows of 49/16 (5 windows)"),
                        ("full", "193 frames without windows (for scale)")):
        secs = statistics.median(r["seconds"] for r in runs[kind])
        print(f"  {label:44s} peak {peak[kind] / 2**20:7.1f} MiB  ({secs:.1f} s)")
    return peak["windowed"] / peak["single"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.device)
        return
    r = drift_report(args)
    m = memory_report(args)
    print(f"RESULT drift_matched_over_unmatched={r:.3f} window_peak_over_single_window={m:.3f}")


if __name__ == "__main__":
    main()
