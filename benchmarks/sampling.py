"""Seconds per sampling step: our pipeline against diffusers' CogVideoXPipeline, same weights.

A CogVideoX transformer of a real family at its real width (5B: 48 heads x 64, inner 3072,
T5 dim 4096, time embedding 512) but only a few layers, with random weights, loaded into both
our :class:`~cogvideox_core.models.transformer.CogVideoXTransformer` and diffusers'
``CogVideoXTransformer3DModel``. Both sample the same request (same prompt embeddings, seed,
scheduler, CFG batched) for ``--steps`` steps, ``output_type="latent"`` (no text encoder, no VAE:
the sampling loop only). After one warm-up each, ``--repeats`` pairs of runs (ours and diffusers,
the order alternating); a run's per-step time is its wall time / steps. Printed: the median
s/step of each, the ratio of every pair, and last ``RESULT step_time_ratio=<r>``, the median of
the pair ratios ours / diffusers (below 1: we are faster); pairing keeps the load of a shared
machine, which drifts, out of the ratio.

    .venv/bin/python benchmarks/sampling.py            # 5B width, 2 layers, CPU
    .venv/bin/python benchmarks/sampling.py --family 2b --layers 4 --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline  # noqa: E402
from diffusers import CogVideoXTransformer3DModel  # noqa: E402

from cogvideox_core.families import get_family, latent_frames  # noqa: E402
from cogvideox_core.generation.pipeline import GenerateRequest, Models, generate_latents  # noqa: E402
from cogvideox_core.runtime import TorchRuntime  # noqa: E402
from cogvideox_core.sampling import SchedulerConfig  # noqa: E402
from cogvideox_core.models.transformer import CogVideoXTransformer  # noqa: E402

SCHEDULERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="5b", help="family whose real width is used (default 5b)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=5, help="pixel frames (4k+1)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--steps", type=int, default=2, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sampler", default="dpm", choices=tuple(SCHEDULERS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """A real-width random transformer in diffusers and ours (same weights), and the family."""
    family = get_family(args.family)
    cfg = dataclasses.replace(family.transformer, num_layers=args.layers)
    family = dataclasses.replace(family, transformer=cfg)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    torch.manual_seed(0)
    ref = CogVideoXTransformer3DModel(**cfg.to_diffusers())
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.02)
    ref = ref.to(device).eval()
    if dtype != torch.float32:
        ref = ref.to(dtype)
    ours = CogVideoXTransformer(cfg, dtype=dtype, device=device).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return family, ref, ours


def embeds(family, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    shape = (1, family.transformer.max_text_len, family.transformer.text_dim)
    dtype = getattr(torch, args.dtype)
    return (torch.randn(shape, generator=gen).to(args.device, dtype),
            torch.randn(shape, generator=gen).to(args.device, dtype))


def diffusers_run(pipe, cond, uncond, args: argparse.Namespace) -> torch.Tensor:
    return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_frames=args.frames,
                height=args.height, width=args.width, num_inference_steps=args.steps, guidance_scale=6.0,
                generator=torch.Generator().manual_seed(0), output_type="latent").frames


def ours_run(models, request, runtime) -> torch.Tensor:
    return generate_latents(models, request, runtime)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def reference_pipeline(family, ref: CogVideoXTransformer3DModel, sampler: str) -> CogVideoXPipeline:
    """diffusers' pipeline around ``ref`` alone (prompt embeddings given, latents out) with the
    family's shipped scheduler config, progress bar off."""
    sched = SCHEDULERS[sampler](snr_shift_scale=family.snr_shift_scale, timestep_spacing="trailing",
                                rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                set_alpha_to_one=True, clip_sample=False)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=ref, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def setup(args: argparse.Namespace):
    """What a run of ``args`` compares: (family, diffusers' transformer, ours with the same
    weights, cond and uncond prompt embeddings, diffusers' pipeline around its transformer),
    after ``--threads``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    family, ref, ours = build(args)
    cond, uncond = embeds(family, args)
    return family, ref, ours, cond, uncond, reference_pipeline(family, ref, args.sampler)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    family, ref, ours, cond, uncond, pipe = setup(args)
    models = Models(ours, family, scheduler=SchedulerConfig(snr_shift_scale=family.snr_shift_scale))
    request = GenerateRequest(prompt_embeds=cond, negative_embeds=uncond, frames=args.frames, height=args.height,
                              width=args.width, steps=args.steps, cfg=6.0, sampler=args.sampler, seed=0)
    runtime = TorchRuntime(device=args.device, show_progress=False)
    run_ours = lambda: ours_run(models, request, runtime)  # noqa: E731
    run_ref = lambda: diffusers_run(pipe, cond, uncond, args)  # noqa: E731
    report_setup(args, family, ours)
    run_ours(), run_ref()  # warm-up (tables, allocator)
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for i in range(args.repeats):  # pairs, the order alternating so drift hits both alike
        order = (("ours", run_ours), ("diffusers", run_ref))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(fn, args.device) / args.steps)
    return report(times)


def report_setup(args: argparse.Namespace, family, model, rounds: str | None = None) -> None:
    """Print what is measured: the model, the request and ``rounds`` (default: the median of
    ``--repeats`` runs)."""
    cfg = family.transformer
    params = sum(p.numel() for p in model.parameters()) / 1e6
    lat = latent_frames(args.frames)
    width = "real width" if cfg.inner_dim == get_family(family.name).transformer.inner_dim else f"width {cfg.inner_dim}"
    print(f"benchmark: {family.name} transformer at {width}, {cfg.num_layers} layers of {cfg.num_heads} heads "
          f"x {cfg.head_dim} (inner {cfg.inner_dim}), {params:.0f}M parameters, random weights, {args.dtype} on "
          f"{args.device}, {torch.get_num_threads()} threads")
    print(f"request: {args.frames} frames {args.height}x{args.width} ({lat} latent frames), 226 text tokens, "
          f"CFG 6 batched, {args.sampler}, {args.steps} steps per run, "
          f"{rounds or f'median of {args.repeats} runs'}")


def report(times: dict[str, list[float]]) -> float:
    """Median s/step of each, and the median of the per-pair ratios (robust to load drift)."""
    for name, values in times.items():
        runs = " ".join(f"{v:.3f}" for v in values)
        print(f"{name:10s} {statistics.median(values):.3f} s/step (runs: {runs})")
    pairs = [o / d for o, d in zip(times["ours"], times["diffusers"])]
    ratio = statistics.median(pairs)
    print(f"ratio ours/diffusers per pair: {' '.join(f'{r:.3f}' for r in pairs)}")
    print(f"RESULT step_time_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
