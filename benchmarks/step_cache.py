"""Step caches (TeaCache, First Block Cache): seconds per run and blocks evaluated, ours and diffusers'.

The setup of ``benchmarks/sampling.py``: a CogVideoX transformer of a real family at its real
width (5B: 48 heads x 64, inner 3072) but only ``--layers`` layers, with random weights, loaded
into our :class:`~cogvideox_core.models.transformer.CogVideoXTransformer` and diffusers'
``CogVideoXTransformer3DModel``; one request (same prompt embeddings, seed, scheduler, CFG 6
batched), ``--steps`` steps, ``output_type="latent"`` (the sampling loop only).

Configurations, each a whole run of ``--steps`` steps:

* ours: no cache, TeaCache 0.1, TeaCache 0.2, First Block Cache 0.05 (diffusers' default) and
  FBC ``--fbc-high`` (a higher threshold, run only when 0.05 skips nothing: random weights
  rarely do, see below; ``--fbc-high 0`` never runs it);
* diffusers' ``CogVideoXPipeline``: no cache, and ``transformer.enable_cache(FirstBlockCacheConfig)``
  at the same FBC threshold(s).

After a short warm-up, ``--repeats`` rounds each run every configuration once (the order rotated
per round, so that the drift of a shared machine hits all alike); every ratio is taken inside a
round and the median over rounds is printed. Block evaluations "computed / total" come from our
pipeline's INFO log record (``step cache <method>: N of M transformer block evaluations ran``)
and, for diffusers, from pre-hooks counting every block's ``attn1`` call (a block the FBC hook
skips does not run it) over every transformer call. ``hook parity`` is the max abs difference of
our FBC latents and diffusers' FBC latents (unscaled, [1, C, F, h, w]) at the same threshold.

Last line: ``RESULT teacache_time_ratio=<TeaCache 0.2 / none> teacache01_time_ratio=<TeaCache 0.1 /
none> fbc_time_ratio=<ours FBC 0.05 / ours none> fbc_vs_diffusers_time_ratio=<ours FBC 0.05 /
diffusers FBC 0.05> hook_parity_maxdiff=<max over the FBC thresholds run>``.

Caveat: the weights are random. TeaCache's skips follow the timestep embedding and its rescaling
polynomial (fitted on the real model), FBC's follow how much block 0's residual changes between
steps; both differ from what real weights give, so the skip counts and time ratios here say what
the machinery costs and saves for *these* skips, not what a real 5B model would skip. With random
weights block 0's video residual changes by more than its own size from step to step (FBC
distance ~1.2-1.5 at 5B width), so diffusers' default 0.05 (tuned on real weights, where it is
a few hundredths) skips nothing; ``--fbc-high`` (default 1.3) is a threshold that skips part of
the steps here, to measure what a skip saves and whether ours and diffusers' skip alike. The small
size (few tokens) also makes the fixed per-step cost (scheduler, CFG, patch embedding, the cache's
own distance) weigh more than at a real size.

    .venv/bin/python benchmarks/step_cache.py                      # 5B width, 4 layers, 50 steps, CPU
    .venv/bin/python benchmarks/step_cache.py --layers 2 --frames 5 --steps 20 --repeats 2  # ~13 min, 2 cores
    .venv/bin/python benchmarks/step_cache.py --steps 6 --layers 2 --repeats 1 --frames 5   # smoke, ~3 min

On 2 CPU cores a 5B-width block costs about 1.2 s per (batched CFG) step at 5 frames 64x96, so the
default (4 layers, 13 frames, 50 steps, 3 rounds) takes hours there; it is meant for a GPU
(``--device cuda``) or a bigger CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusers.hooks import FirstBlockCacheConfig  # noqa: E402

from benchmarks.sampling import SCHEDULERS, build, embeds, reference_pipeline, report_setup, timed  # noqa: E402
from cogvideox_core.generation.pipeline import GenerateRequest, Models, generate_latents  # noqa: E402
from cogvideox_core.models.step_cache import CacheOptions  # noqa: E402
from cogvideox_core.runtime import TorchRuntime  # noqa: E402
from cogvideox_core.sampling import SchedulerConfig  # noqa: E402

_SUMMARY = re.compile(r"step cache (\w+): (\d+) of (\d+) transformer block evaluations ran")
PIPELINE_LOGGER = "cogvideox_core.generation.pipeline"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="5b", help="family whose real width is used (default 5b)")
    p.add_argument("--layers", type=int, default=4, help="transformer layers (FBC needs >= 2)")
    p.add_argument("--frames", type=int, default=13, help="pixel frames (4k+1)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--steps", type=int, default=50, help="steps per run")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every configuration")
    p.add_argument("--sampler", default="dpm", choices=tuple(SCHEDULERS))
    p.add_argument("--fbc", type=float, default=0.05, help="FBC threshold (diffusers' default 0.05)")
    p.add_argument("--fbc-high", type=float, default=1.3,
                   help="FBC threshold also run when --fbc skips nothing (0: never)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


class _Summaries(logging.Handler):
    """Collects our pipeline's step cache summaries (computed, total) per run."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: list[tuple[int, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = _SUMMARY.search(record.getMessage())
        if m:
            self.counts.append((int(m.group(2)), int(m.group(3))))


class _BlockCounter:
    """Counts diffusers' transformer calls and block evaluations (pre-hooks; always on)."""

    def __init__(self, transformer) -> None:
        self.calls = self.blocks = 0
        self.per_call = len(transformer.transformer_blocks)
        transformer.register_forward_pre_hook(self._call)
        for block in transformer.transformer_blocks:
            block.attn1.register_forward_pre_hook(self._block)

    def _call(self, *_) -> None:
        self.calls += 1

    def _block(self, *_) -> None:
        self.blocks += 1

    def reset(self) -> None:
        self.calls = self.blocks = 0

    def counts(self) -> tuple[int, int]:
        return self.blocks, self.calls * self.per_call


@dataclasses.dataclass
class Config:
    name: str
    run: object  # () -> (latents unscaled [1, C, F, h, w], (computed, total) | None)
    times: list[float] = dataclasses.field(default_factory=list)
    counts: tuple[int, int] | None = None
    latents: torch.Tensor | None = None


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    family, ref, ours = build(args)
    cond, uncond = embeds(family, args)
    pipe = reference_pipeline(family, ref, args.sampler)
    counter = _BlockCounter(ref)
    models = Models(ours, family, scheduler=SchedulerConfig(snr_shift_scale=family.snr_shift_scale))
    runtime = TorchRuntime(device=args.device, show_progress=False)
    summaries = _Summaries()
    log = logging.getLogger(PIPELINE_LOGGER)
    log.addHandler(summaries)
    log.setLevel(logging.INFO)

    def request(cache: CacheOptions | None, steps: int) -> GenerateRequest:
        return GenerateRequest(prompt_embeds=cond, negative_embeds=uncond, frames=args.frames, height=args.height,
                               width=args.width, steps=steps, cfg=6.0, sampler=args.sampler, seed=0, cache=cache)

    def ours_fn(cache: CacheOptions | None, steps: int = args.steps):
        req = request(cache, steps)

        def run():
            n = len(summaries.counts)
            latents = generate_latents(models, req, runtime)
            if cache is None:
                blocks = family.transformer.num_layers * steps  # one batched CFG call per step
                return latents, (blocks, blocks)
            assert len(summaries.counts) == n + 1, "no step cache summary logged"
            return latents, summaries.counts[-1]
        return run

    def diffusers_fn(threshold: float | None, steps: int = args.steps):
        def run():
            if ref.is_cache_enabled:
                ref.disable_cache()
            if threshold is not None:
                ref.enable_cache(FirstBlockCacheConfig(threshold=threshold))
            counter.reset()
            frames = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_frames=args.frames,
                          height=args.height, width=args.width, num_inference_steps=steps, guidance_scale=6.0,
                          generator=torch.Generator().manual_seed(0), output_type="latent").frames
            latents = (1 / family.vae_scaling_factor) * frames.permute(0, 2, 1, 3, 4)  # as ours: unscaled
            return latents, counter.counts()
        return run

    report_setup(args, family, ours, rounds=f"{args.repeats} rounds")
    ours_fn(None, 2)(), diffusers_fn(None, 2)()  # warm-up (tables, allocator)

    configs = [Config("ours none", ours_fn(None)),
               Config("ours TeaCache 0.1", ours_fn(CacheOptions("teacache", 0.1))),
               Config("ours TeaCache 0.2", ours_fn(CacheOptions("teacache", 0.2))),
               Config(f"ours FBC {args.fbc:g}", ours_fn(CacheOptions("fbc", args.fbc))),
               Config("diffusers none", diffusers_fn(None)),
               Config(f"diffusers FBC {args.fbc:g}", diffusers_fn(args.fbc))]
    fbc_thresholds = [args.fbc]
    # does the default threshold skip anything on these random weights? (one untimed run; decides
    # whether the higher threshold is added)
    _, (computed, total) = configs[3].run()
    if computed == total and args.fbc_high > 0 and args.fbc_high != args.fbc:
        print(f"FBC {args.fbc:g} skips nothing on these random weights ({computed} of {total} block "
              f"evaluations ran): also measuring FBC {args.fbc_high:g}")
        fbc_thresholds.append(args.fbc_high)
        configs += [Config(f"ours FBC {args.fbc_high:g}", ours_fn(CacheOptions("fbc", args.fbc_high))),
                    Config(f"diffusers FBC {args.fbc_high:g}", diffusers_fn(args.fbc_high))]

    for i in range(args.repeats):  # rounds, the order rotated
        k = i % len(configs)
        for c in configs[k:] + configs[:k]:
            out: dict = {}
            seconds = timed(lambda: out.update(zip(("latents", "counts"), c.run())), args.device)
            c.times.append(seconds)
            c.latents, c.counts = out["latents"], out["counts"]
    if ref.is_cache_enabled:
        ref.disable_cache()
    log.removeHandler(summaries)
    return report(args, configs, fbc_thresholds)


def report(args: argparse.Namespace, configs: list[Config], fbc_thresholds: list[float]) -> str:
    by = {c.name: c for c in configs}
    base = {"ours": by["ours none"], "diffusers": by["diffusers none"]}

    def ratio(a: Config, b: Config) -> float:  # median of the per-round ratios
        return statistics.median(x / y for x, y in zip(a.times, b.times))

    print(f"{'configuration':22s} {'s/run (median)':>14s} {'s/step':>7s} {'blocks computed/total':>22s} "
          f"{'skipped':>8s} {'time vs own none':>16s}   runs")
    for c in configs:
        computed, total = c.counts
        side = "ours" if c.name.startswith("ours") else "diffusers"
        med = statistics.median(c.times)
        print(f"{c.name:22s} {med:14.3f} {med / args.steps:7.4f} {f'{computed} / {total}':>22s} "
              f"{1 - computed / total:8.1%} {ratio(c, base[side]):16.3f}   "
              f"{' '.join(f'{t:.2f}' for t in c.times)}")
    diffs = {}
    for t in fbc_thresholds:
        o, d = by[f"ours FBC {t:g}"], by[f"diffusers FBC {t:g}"]
        diffs[t] = (o.latents - d.latents).abs().max().item()
        print(f"FBC {t:g}: ours / diffusers time {ratio(o, d):.3f}, blocks computed ours {o.counts[0]} "
              f"diffusers {d.counts[0]} ({'same' if o.counts == d.counts else 'DIFFERENT'}), "
              f"latents max abs diff {diffs[t]:.3g}")
    nd = (by["ours none"].latents - by["diffusers none"].latents).abs().max().item()
    print(f"no cache: ours / diffusers time {ratio(by['ours none'], by['diffusers none']):.3f}, "
          f"latents max abs diff {nd:.3g}")
    fbc = f"ours FBC {args.fbc:g}"
    line = (f"RESULT teacache_time_ratio={ratio(by['ours TeaCache 0.2'], base['ours']):.3f} "
            f"teacache01_time_ratio={ratio(by['ours TeaCache 0.1'], base['ours']):.3f} "
            f"fbc_time_ratio={ratio(by[fbc], base['ours']):.3f} "
            f"fbc_vs_diffusers_time_ratio={ratio(by[fbc], by[f'diffusers FBC {args.fbc:g}']):.3f} "
            f"hook_parity_maxdiff={max(diffs.values()):.3g}")
    print(line)
    return line


if __name__ == "__main__":
    main()
