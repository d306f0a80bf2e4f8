"""Step caches and compile: seconds per run, work evaluated and memory, ours and diffusers'.

The setup of ``benchmarks/sampling.py``: a CogVideoX transformer of a real family at its real
width (5B: 48 heads x 64, inner 3072) but only ``--layers`` layers, with random weights, loaded
into our :class:`~cogvideox_core.models.transformer.CogVideoXTransformer` and diffusers'
``CogVideoXTransformer3DModel``; one request (same prompt embeddings, seed, scheduler, CFG 6
batched), ``--steps`` steps, ``output_type="latent"`` (the sampling loop only).

Configurations, each a whole run of ``--steps`` steps:

* ours: no cache, TeaCache 0.1, TeaCache 0.2, First Block Cache 0.05 (diffusers' default), FBC
  ``--fbc-high`` (a higher threshold, run only when 0.05 skips nothing: random weights rarely do,
  see below; ``--fbc-high 0`` never runs it), Pyramid Attention Broadcast and FasterCache (both
  with diffusers' defaults), and no cache with every block compiled (``compile_blocks``, on a copy
  of the model; its compilation happens in the untimed warm-up);
* diffusers' ``CogVideoXPipeline``: no cache, and ``transformer.enable_cache(...)`` with
  ``FirstBlockCacheConfig`` at the same FBC threshold(s), ``PyramidAttentionBroadcastConfig``
  (spatial range 2, timesteps 100..800) and ``FasterCacheConfig()``.

After a short warm-up, ``--repeats`` rounds each run every configuration once (the order rotated
per round, so that the drift of a shared machine hits all alike); every ratio is taken inside a
round and the median over rounds is printed. Work "computed / total" comes from our step cache's
INFO log record (``step cache <method>: N of M transformer block|attention evaluations ran; held
X MiB``) and, for diffusers, from pre-hooks on every block's ``attn1.to_q`` (it runs only when
attention is computed: a block the FBC hook skips, or an attention PAB/FasterCache reuses, does
not run it) over every transformer call. ``held`` is what our cache holds at the end of the run;
``peak`` is the run's peak memory above what was allocated before it (CUDA: the allocator's
peak; CPU: the process's resident memory, sampled every millisecond). ``hook parity`` is the max
abs difference of our latents and diffusers' (unscaled, [1, C, F, h, w]) for each hook.

Last line: ``RESULT teacache_time_ratio=<TeaCache 0.2 / none> teacache01_time_ratio=<TeaCache 0.1 /
none> fbc_time_ratio=<ours FBC 0.05 / ours none> pab_time_ratio=<ours PAB / ours none>
fastercache_time_ratio=<ours FasterCache / ours none> fastercache_peak_ratio=<its peak / none's>
compile_time_ratio=<compiled / eager> fbc_vs_diffusers_time_ratio=... pab_vs_diffusers_time_ratio=...
fastercache_vs_diffusers_time_ratio=... hook_parity_maxdiff=<max over the hooks>``.

Caveat: the weights are random. TeaCache's skips follow the timestep embedding and its rescaling
polynomial (fitted on the real model), FBC's follow how much block 0's residual changes between
steps; both differ from what real weights give, so the skip counts and time ratios here say what
the machinery costs and saves for *these* skips, not what a real 5B model would skip (PAB and
FasterCache follow fixed schedules: their counts are the real ones). With random weights block
0's video residual changes by more than its own size from step to step (FBC distance ~1.2-1.5 at
5B width), so diffusers' default 0.05 (tuned on real weights, where it is a few hundredths) skips
nothing; ``--fbc-high`` (default 1.3) is a threshold that skips part of the steps here. The small
size (few tokens) also makes the fixed per-step cost (scheduler, CFG, patch embedding, the
cache's own bookkeeping, FasterCache's FFTs) weigh more than at a real size.

    .venv/bin/python benchmarks/step_cache.py                      # 5B width, 4 layers, 50 steps, CPU
    .venv/bin/python benchmarks/step_cache.py --layers 2 --frames 5 --height 32 --width 48 --repeats 2
    .venv/bin/python benchmarks/step_cache.py --steps 6 --layers 2 --repeats 1 --frames 5   # smoke

On 2 CPU cores a 5B-width block costs about 1.2 s per (batched CFG) step at 5 frames 64x96, so the
default (4 layers, 13 frames, 50 steps, 3 rounds) takes hours there; it is meant for a GPU
(``--device cuda``) or a bigger CPU.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import re
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig,  # noqa: E402
                             PyramidAttentionBroadcastConfig)

from benchmarks.measure import PeakMemory  # noqa: E402
from benchmarks.sampling import SCHEDULERS, report_setup, setup, timed  # noqa: E402
from cogvideox_core.generation.pipeline import GenerateRequest, Models, generate_latents  # noqa: E402
from cogvideox_core.models.step_cache import CacheOptions  # noqa: E402
from cogvideox_core.runtime import TorchRuntime  # noqa: E402
from cogvideox_core.sampling import SchedulerConfig  # noqa: E402

_SUMMARY = re.compile(r"step cache (\w+): (\d+) of (\d+) [a-z ]+ evaluations ran; held ([\d.]+) MiB")
CACHE_LOGGER = "cogvideox_core.models.step_cache"


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
    p.add_argument("--no-compile", action="store_true", help="skip the compiled configuration")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


class _Summaries(logging.Handler):
    """Collects our step cache summaries (computed, total, held MiB) per run."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: list[tuple[int, int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = _SUMMARY.search(record.getMessage())
        if m:
            self.counts.append((int(m.group(2)), int(m.group(3)), float(m.group(4))))


class _AttentionCounter:
    """Counts diffusers' transformer calls and attention evaluations (pre-hooks on ``to_q``)."""

    def __init__(self, transformer) -> None:
        self.calls = self.evaluated = 0
        self.per_call = len(transformer.transformer_blocks)
        transformer.register_forward_pre_hook(self._call)
        for block in transformer.transformer_blocks:
            block.attn1.to_q.register_forward_pre_hook(self._evaluate)

    def _call(self, *_) -> None:
        self.calls += 1

    def _evaluate(self, *_) -> None:
        self.evaluated += 1

    def reset(self) -> None:
        self.calls = self.evaluated = 0

    def counts(self) -> tuple[int, int, float]:
        return self.evaluated, self.calls * self.per_call, 0.0


@dataclasses.dataclass
class Config:
    name: str
    run: object  # () -> (latents unscaled [1, C, F, h, w], (computed, total, held MiB))
    times: list[float] = dataclasses.field(default_factory=list)
    peaks: list[int] = dataclasses.field(default_factory=list)
    counts: tuple[int, int, float] | None = None
    latents: torch.Tensor | None = None


def _diffusers_cache(method: str, pipe, threshold: float | None):
    now = lambda: pipe.current_timestep  # noqa: E731  the hooks' timestep source
    if method == "fbc":
        return FirstBlockCacheConfig(threshold=threshold)
    if method == "pab":
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                               spatial_attention_timestep_skip_range=(100, 800),
                                               current_timestep_callback=now)
    return FasterCacheConfig(current_timestep_callback=now)


def _compiled(transformer) -> tuple[object | None, str]:
    """A compiled copy of ``transformer`` (every block), or None and why not."""
    try:
        from cogvideox_core.models.compile import compile_blocks
    except ImportError as e:
        return None, f"not available: {e}"
    twin = copy.deepcopy(transformer)
    compile_blocks(twin)
    return twin, "compiled"


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    family, ref, ours, cond, uncond, pipe = setup(args)
    counter = _AttentionCounter(ref)
    scheduler = SchedulerConfig(snr_shift_scale=family.snr_shift_scale)
    runtime = TorchRuntime(device=args.device, show_progress=False)
    summaries = _Summaries()
    log = logging.getLogger(CACHE_LOGGER)
    log.addHandler(summaries)
    log.setLevel(logging.INFO)

    def request(cache: CacheOptions | None, steps: int) -> GenerateRequest:
        return GenerateRequest(prompt_embeds=cond, negative_embeds=uncond, frames=args.frames, height=args.height,
                               width=args.width, steps=steps, cfg=6.0, sampler=args.sampler, seed=0, cache=cache)

    def ours_fn(cache: CacheOptions | None, steps: int = args.steps, model=ours):
        req, models = request(cache, steps), Models(model, family, scheduler=scheduler)

        def run():
            n = len(summaries.counts)
            latents = generate_latents(models, req, runtime)
            if cache is None:
                blocks = family.transformer.num_layers * steps  # one batched CFG call per step
                return latents, (blocks, blocks, 0.0)
            assert len(summaries.counts) == n + 1, "no step cache summary logged"
            return latents, summaries.counts[-1]
        return run

    def diffusers_fn(method: str | None, threshold: float | None = None, steps: int = args.steps):
        def run():
            if ref.is_cache_enabled:
                ref.disable_cache()
            if method is not None:
                ref.enable_cache(_diffusers_cache(method, pipe, threshold))
            counter.reset()
            frames = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_frames=args.frames,
                          height=args.height, width=args.width, num_inference_steps=steps, guidance_scale=6.0,
                          generator=torch.Generator().manual_seed(0), output_type="latent").frames
            latents = (1 / family.vae_scaling_factor) * frames.permute(0, 2, 1, 3, 4)  # as ours: unscaled
            return latents, counter.counts()
        return run

    report_setup(args, family, ours, rounds=f"{args.repeats} rounds")
    configs = [Config("ours none", ours_fn(None)),
               Config("ours TeaCache 0.1", ours_fn(CacheOptions("teacache", 0.1))),
               Config("ours TeaCache 0.2", ours_fn(CacheOptions("teacache", 0.2))),
               Config(f"ours FBC {args.fbc:g}", ours_fn(CacheOptions("fbc", args.fbc))),
               Config("ours PAB", ours_fn(CacheOptions("pab"))),
               Config("ours FasterCache", ours_fn(CacheOptions("fastercache"))),
               Config("diffusers none", diffusers_fn(None)),
               Config(f"diffusers FBC {args.fbc:g}", diffusers_fn("fbc", args.fbc)),
               Config("diffusers PAB", diffusers_fn("pab")),
               Config("diffusers FasterCache", diffusers_fn("fastercache"))]
    compiled, why = (None, "--no-compile") if args.no_compile else _compiled(ours)
    print(f"compile: {why}")
    if compiled is not None:
        configs.append(Config("ours compiled", ours_fn(None, model=compiled)))
        ours_fn(None, 2, compiled)()  # warm-up: compiles every block for this shape
    ours_fn(None, 2)(), diffusers_fn(None, steps=2)()  # warm-up (tables, allocator)
    fbc_thresholds = [args.fbc]
    # does the default threshold skip anything on these random weights? (one untimed run; decides
    # whether the higher threshold is added)
    _, (computed, total, _) = configs[3].run()
    if computed == total and args.fbc_high > 0 and args.fbc_high != args.fbc:
        print(f"FBC {args.fbc:g} skips nothing on these random weights ({computed} of {total} block "
              f"evaluations ran): also measuring FBC {args.fbc_high:g}")
        fbc_thresholds.append(args.fbc_high)
        configs += [Config(f"ours FBC {args.fbc_high:g}", ours_fn(CacheOptions("fbc", args.fbc_high))),
                    Config(f"diffusers FBC {args.fbc_high:g}", diffusers_fn("fbc", args.fbc_high))]

    peak = PeakMemory(args.device)
    for i in range(args.repeats):  # rounds, the order rotated
        k = i % len(configs)
        for c in configs[k:] + configs[:k]:
            out: dict = {}
            c.peaks.append(peak.measure(lambda: c.times.append(
                timed(lambda: out.update(zip(("latents", "counts"), c.run())), args.device))))
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

    def peak(c: Config) -> float:
        return statistics.median(c.peaks)

    print(f"{'configuration':22s} {'s/run (median)':>14s} {'s/step':>7s} {'computed/total':>15s} "
          f"{'skipped':>8s} {'time vs none':>12s} {'held MiB':>9s} {'peak MiB':>9s}   runs")
    for c in configs:
        computed, total, held = c.counts
        side = "ours" if c.name.startswith("ours") else "diffusers"
        med = statistics.median(c.times)
        print(f"{c.name:22s} {med:14.3f} {med / args.steps:7.4f} {f'{computed} / {total}':>15s} "
              f"{1 - computed / total:8.1%} {ratio(c, base[side]):12.3f} {held:9.1f} {peak(c) / 2**20:9.1f}   "
              f"{' '.join(f'{t:.2f}' for t in c.times)}")
    pairs = [(f"FBC {t:g}", f"ours FBC {t:g}", f"diffusers FBC {t:g}") for t in fbc_thresholds]
    pairs += [("PAB", "ours PAB", "diffusers PAB"), ("FasterCache", "ours FasterCache", "diffusers FasterCache"),
              ("no cache", "ours none", "diffusers none")]
    diffs = {}
    for label, o_name, d_name in pairs:
        o, d = by[o_name], by[d_name]
        diffs[label] = (o.latents - d.latents).abs().max().item()
        print(f"{label}: ours / diffusers time {ratio(o, d):.3f}, evaluations computed ours {o.counts[0]} "
              f"diffusers {d.counts[0]} ({'same' if o.counts[:2] == d.counts[:2] else 'DIFFERENT'}), "
              f"latents max abs diff {diffs[label]:.3g}")
    compiled = by.get("ours compiled")
    if compiled is not None:
        print(f"compiled: latents max abs diff vs eager {(compiled.latents - base['ours'].latents).abs().max():.3g}")
    fbc = f"ours FBC {args.fbc:g}"
    line = (f"RESULT teacache_time_ratio={ratio(by['ours TeaCache 0.2'], base['ours']):.3f} "
            f"teacache01_time_ratio={ratio(by['ours TeaCache 0.1'], base['ours']):.3f} "
            f"fbc_time_ratio={ratio(by[fbc], base['ours']):.3f} "
            f"pab_time_ratio={ratio(by['ours PAB'], base['ours']):.3f} "
            f"fastercache_time_ratio={ratio(by['ours FasterCache'], base['ours']):.3f} "
            f"fastercache_peak_ratio={peak(by['ours FasterCache']) / max(peak(base['ours']), 1):.3f} "
            f"compile_time_ratio={ratio(compiled, base['ours']) if compiled else float('nan'):.3f} "
            f"fbc_vs_diffusers_time_ratio={ratio(by[fbc], by[f'diffusers FBC {args.fbc:g}']):.3f} "
            f"pab_vs_diffusers_time_ratio={ratio(by['ours PAB'], by['diffusers PAB']):.3f} "
            f"fastercache_vs_diffusers_time_ratio={ratio(by['ours FasterCache'], by['diffusers FasterCache']):.3f} "
            f"hook_parity_maxdiff={max(v for k, v in diffs.items() if k != 'no cache'):.3g}")
    print(line)
    return line


if __name__ == "__main__":
    main()
