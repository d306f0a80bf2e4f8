"""Full-size CogVideoX on a GPU: seconds per step, MFU and peak VRAM, ours against diffusers.

One process, nothing downloaded. Sections (``--only`` picks some; they run in this order):

* ``5b``: the CogVideoX-5b transformer (42 layers, 48 heads x 64) at 49 x 480 x 720 and
* ``1.5``: the CogVideoX1.5-5B transformer at 81 x 768 x 1360 (21 latent frames padded to 22),
  each built from its family config (``cogvideox_core.families``) on the meta device, its weights
  then drawn N(0, 0.02) straight on the GPU in bf16 (a 5B model never exists in fp32 on the CPU),
  and the same tensors assigned to diffusers' ``CogVideoXTransformer3DModel`` (same keys; the
  weights are shared, not copied). One request (random prompt embeddings, seed 0, DPM, CFG 6
  batched, ``output_type="latent"``) is sampled by our ``generate_latents`` and diffusers'
  ``CogVideoXPipeline``: one warm-up step each, then ``--repeats`` pairs of ``--steps``-step runs,
  the order alternating, ``torch.cuda.synchronize`` around each. A run's s/step is its wall time
  / steps; the model call and the scheduler update cost the same at every step, so a 50-step
  generation takes 50 x that (``--steps 50`` runs whole generations). Peak VRAM is
  ``torch.cuda.max_memory_allocated`` over a run after a reset (the shared weights included) and
  "work" is that peak minus what was allocated before the run. MFU = model FLOPs per step /
  (s/step) / the GPU's dense bf16 peak, FLOPs per step = 2 (CFG batch) x layers x (2 T d^2 (4 + 8)
  (q, k, v, out and the 4x feed-forward) + 4 T^2 d (QK^T and PV)), T = 226 text + video tokens.
  Parity: the max abs difference of our final latents and diffusers' (unscaled, padding dropped)
  must be <= 1e-4 in fp32 (``--tiny``) and their relative RMS difference <= 2e-2 in bf16; a run
  that fails it exits 1 after the report (a benchmark of two different computations is worthless).
* ``decode``: peak VRAM of our exact tiled decode (``cogvideox_core.vae.tiling``: as the pipeline's
  ``decode_latents`` calls it, tiles from the free memory, and with diffusers' tile size,
  240 x 360 px) against diffusers' ``AutoencoderKLCogVideoX`` with ``enable_tiling()``, on 13
  random latent frames of 60 x 90 (49 x 480 x 720), random bf16 VAE weights shared by both.
  "peak" = the decode's working memory (peak minus what was allocated before) plus one VAE's
  weights; our frames stream to the CPU as they are made, diffusers' stay on the GPU.
* ``variants`` (on the 5b case): each run guarded (a failure is logged with the variant's name and
  the others run), reported as s/step and time ratio against diffusers' eager bf16: step caches
  (``GenerateRequest.cache``; TeaCache, First Block Cache and, where
  ``cogvideox_core.models.step_cache.METHODS`` has them, PAB and FasterCache; ``--cache-steps``
  steps per run since the first and last steps always compute), attention backends
  (``cogvideox_core.attention.select_attention``: sdpa, flash, sage), ``torch.compile`` of the
  blocks (``cogvideox_core.models.compile.compile_blocks``), fp8 block weights
  (``FP8_TRANSFORMER_KEYS`` cast to float8_e4m3fn, computed through
  ``cogvideox_core.ops.fp8_matmul_ops``, else ``cast_ops``, said in the note) and the best
  combination (sage or flash + compile + fp8). A part missing from the tree is reported as
  "not available: <what>", never as a number.

Output: a markdown table, then one line ``RESULT gpu step_ratio=<5b ours/diffusers s/step, median of
the pairs> best_ratio=<best combination / diffusers eager> best_speedup=<1 / best_ratio>
mfu=<5b plain> sampling_peak_ratio=<5b ours/diffusers peak> decode_peak_gb=<ours at diffusers' tile>
...`` (``n/a`` where not measured). Time ratios are ours / diffusers: below 1, we are faster.
Caveat: random weights; a cache's skips follow them (see ``benchmarks/step_cache.py``), so its
row says what the machinery costs and saves for these skips, not what real weights would skip.

``--tiny``: the same code on the CPU in fp32 with 2-layer 2 x 16-head models of the same families
at 9 x 32 x 48, 2 steps (3 for caches), a fake 1 TFLOP/s peak and no VRAM numbers: it checks the
script and the parity, its times mean nothing.

On a lent H100/H200: the device machine has torch (2.11, CUDA) but neither diffusers nor
sageattention; they travel as wheels in ``.whl/`` (git-ignored; see the device tool's README in
the tool library). ``importlib_metadata`` is not needed on Python 3.12::

    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 sageattention==1.0.6
    # one device run, carry [".whl"], timeout_s 600 (about 6-7 min of work on an H200 by estimate):
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
        && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --budget-s 420 \\
        2>&1 | tee $OUT/gpu.log

``--budget-s`` skips what would start late (said in its row), so a slow machine still prints the
table and the RESULT line before the timeout; rows are also logged to stderr as they are measured.

    .venv/bin/python benchmarks/gpu.py --tiny        # CPU check, about 35 s on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel  # noqa: E402

from benchmarks.sampling import diffusers_run, embeds, ours_run, reference_pipeline, report_setup, timed  # noqa: E402
from cogvideox_core.families import (SPATIAL_COMPRESSION, Family, TransformerConfig, VAEConfig,  # noqa: E402
                                     get_family, latent_frames)
from cogvideox_core.generation.pipeline import GenerateRequest, Models, decode_latents  # noqa: E402
from cogvideox_core.loading.weights import FP8_TRANSFORMER_KEYS, model_bytes  # noqa: E402
from cogvideox_core.models import step_cache  # noqa: E402
from cogvideox_core.models.step_cache import CacheOptions  # noqa: E402
from cogvideox_core.models.transformer import CogVideoXTransformer  # noqa: E402
from cogvideox_core.ops import AttentionFn, Ops, cast_ops, default_ops, sdpa_attention  # noqa: E402
from cogvideox_core.runtime import TorchRuntime  # noqa: E402
from cogvideox_core.sampling import SchedulerConfig  # noqa: E402
from cogvideox_core.tiny import tiny_transformer_config, tiny_vae_config  # noqa: E402
from cogvideox_core.vae.model import CogVideoXVAE  # noqa: E402
from cogvideox_core.vae.tiling import no_progress, tiled_decode  # noqa: E402

logger = logging.getLogger("benchmarks.gpu")

SECTIONS = ("5b", "decode", "variants", "1.5")
# section -> (family, frames, height, width): full size, and --tiny
SIZES = {"5b": ("5b", 49, 480, 720), "1.5": ("1.5-5b", 81, 768, 1360)}
TINY_SIZES = {"5b": ("5b", 9, 32, 48), "1.5": ("1.5-5b", 9, 32, 48)}
DECODE_TILE, TINY_DECODE_TILE = (240, 360), (16, 24)  # diffusers' default tile: half of 480 x 720
# dense bf16 peak FLOP/s by device name (the first match wins; vendor datasheets)
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
TINY_PEAK = 1e12  # a fake peak for --tiny: the MFU printed there means nothing
FP32_MAXDIFF, LOW_PRECISION_RTOL = 1e-4, 2e-2
CACHE_METHODS = ("teacache", "fbc", "pab", "fastercache")
ATTENTIONS = ("sdpa", "flash", "sage")
GB = 1e9
CACHE_LOGGER = "cogvideox_core.models"  # the step caches log their summary under it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU in fp32 (checks the script)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help=f"sections to run (default: all, in the order "
                   f"{' '.join(SECTIONS)})")
    p.add_argument("--steps", type=int, default=2, help="DPM steps per timed run")
    p.add_argument("--cache-steps", type=int, help="steps per step-cache run (default 10; --tiny 3)")
    p.add_argument("--repeats", type=int, default=2, help="timed pairs (ours, diffusers) of the 5b section")
    p.add_argument("--repeats-15", type=int, default=1, help="timed pairs of the 1.5 section")
    p.add_argument("--variant-repeats", type=int, default=1, help="timed runs of each variant")
    p.add_argument("--device", help="default: cuda (cpu with --tiny)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                   help="default: bfloat16 (float32 with --tiny)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for a GPU not in the table")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="skip sections and variants that would start after this many seconds (0: no limit)")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    args.cache_steps = args.cache_steps or (3 if args.tiny else 10)
    args.sampler = "dpm"
    args.only = args.only or list(SECTIONS)
    return args


# ---- results ------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table. ``ratio``: s/step over diffusers' eager s/step of the same case."""

    section: str
    run: str
    s_per_step: float | None = None
    ratio: float | None = None
    mfu: float | None = None
    peak_gb: float | None = None
    work_gb: float | None = None
    blocks: str = ""
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    values: dict[str, float | None] = field(default_factory=dict)
    parity_failures: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        logger.info("measured %s / %s: %s", row.section, row.run,
                    " ".join(f"{k}={v}" for k, v in dataclasses.asdict(row).items() if v not in (None, "")))

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Unavailable(Exception):
    """A part a variant needs is not in the tree (or cannot run here): reported, not measured."""


def optional(module: str, attr: str) -> object:
    """``module.attr``, or :class:`Unavailable` naming what is missing. Only the module itself
    missing counts; a module that fails on its own imports is an error."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            raise Unavailable(f"no module {module}") from None
        raise
    if not hasattr(mod, attr):
        raise Unavailable(f"no {module}.{attr}")
    return getattr(mod, attr)


# ---- memory -------------------------------------------------------------------------------

def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def free_memory(device: str) -> None:
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


@dataclass
class Peak:
    """Peak allocated bytes of what runs inside it (CUDA only; None elsewhere)."""

    device: str
    before: int = 0
    peak: int | None = None

    def __enter__(self) -> Peak:
        if is_cuda(self.device):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: object) -> None:
        if is_cuda(self.device):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()

    @property
    def work(self) -> int | None:
        return None if self.peak is None else self.peak - self.before


# ---- models: random weights drawn on the device ------------------------------------------------

def random_state(model: nn.Module, dtype: torch.dtype, device: str, seed: int) -> dict[str, torch.Tensor]:
    """N(0, 0.02) tensors for every entry of ``model``'s state dict (a meta model: shapes only),
    drawn on ``device`` in ``dtype`` from a seeded generator of that device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return {k: torch.empty(t.shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)
            for k, t in model.state_dict().items()}


def check_materialised(model: nn.Module, what: str) -> None:
    left = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{what}: tensors left on the meta device: {left[:5]}")


def transformer_like(cfg: TransformerConfig, state: dict[str, torch.Tensor], ops: Ops = default_ops,
                     attention: AttentionFn = sdpa_attention) -> CogVideoXTransformer:
    """Our transformer built on meta with ``ops`` / ``attention``, the tensors of ``state``
    assigned (shared, not copied)."""
    dtype = next(iter(state.values())).dtype
    model = CogVideoXTransformer(cfg, ops=ops, dtype=dtype, device="meta", attention=attention)
    model.load_state_dict(state, strict=True, assign=True)
    check_materialised(model, "ours")
    return model.eval()


def reference_like(ours: CogVideoXTransformer) -> CogVideoXTransformer3DModel:
    """diffusers' transformer of the same config on meta, our tensors assigned (same keys)."""
    with torch.device("meta"):
        ref = CogVideoXTransformer3DModel(**ours.config.to_diffusers())
    ref.load_state_dict(ours.state_dict(), strict=True, assign=True)
    check_materialised(ref, "diffusers")
    return ref.eval()


def random_transformer(cfg: TransformerConfig, dtype: torch.dtype, device: str, seed: int = 0
                       ) -> CogVideoXTransformer:
    shapes = CogVideoXTransformer(cfg, dtype=dtype, device="meta")
    return transformer_like(cfg, random_state(shapes, dtype, device, seed))


# ---- a case: one family at one size, ours and diffusers ------------------------------------

@dataclass
class Case:
    key: str
    family: Family
    args: argparse.Namespace  # frames, height, width, steps, dtype, device, sampler, repeats
    ours: CogVideoXTransformer
    pipe: object  # diffusers CogVideoXPipeline around the same weights
    cond: torch.Tensor
    uncond: torch.Tensor
    runtime: TorchRuntime
    baseline: Comparison | None = None

    @property
    def tokens(self) -> int:
        """Text + video tokens of one model call (the 1.5 padding latent included)."""
        cfg, a = self.family.transformer, self.args
        lat = latent_frames(a.frames)
        lat += self.family.temporal_padding(lat)
        p, s = cfg.patch_size, SPATIAL_COMPRESSION
        video = lat // (cfg.patch_size_t or 1) * (a.height // s // p) * (a.width // s // p)
        return cfg.max_text_len + video

    def run_ours(self, model: nn.Module, steps: int, cache: CacheOptions | None = None) -> torch.Tensor:
        """Our final latents [1, C, F, h, w], unscaled, padding dropped."""
        models = Models(model, self.family, scheduler=SchedulerConfig(snr_shift_scale=self.family.snr_shift_scale))
        a = self.args
        request = GenerateRequest(prompt_embeds=self.cond, negative_embeds=self.uncond, frames=a.frames,
                                  height=a.height, width=a.width, steps=steps, cfg=6.0, sampler=a.sampler,
                                  seed=0, cache=cache)
        return ours_run(models, request, self.runtime)

    def run_diffusers(self, steps: int) -> torch.Tensor:
        """diffusers' final latents in our layout: unscaled, [1, C, F, h, w], padding dropped."""
        frames = diffusers_run(self.pipe, self.cond, self.uncond, argparse.Namespace(**{**vars(self.args),
                                                                                        "steps": steps}))
        pad = self.family.temporal_padding(latent_frames(self.args.frames))
        return (1 / self.family.vae_scaling_factor) * frames[:, pad:].permute(0, 2, 1, 3, 4)


def make_case(key: str, args: argparse.Namespace) -> Case:
    name, frames, height, width = (TINY_SIZES if args.tiny else SIZES)[key]
    family = get_family(name)
    cfg = tiny_transformer_config(name) if args.tiny else family.transformer
    family = dataclasses.replace(family, transformer=cfg)
    dtype = getattr(torch, args.dtype)
    ours = random_transformer(cfg, dtype, args.device)
    pipe = reference_pipeline(family, reference_like(ours), args.sampler)
    repeats = args.repeats_15 if key == "1.5" else args.repeats
    case_args = argparse.Namespace(frames=frames, height=height, width=width, steps=args.steps, dtype=args.dtype,
                                   device=args.device, sampler=args.sampler, repeats=repeats,
                                   variant_repeats=args.variant_repeats)
    cond, uncond = embeds(family, case_args)
    case = Case(key, family, case_args, ours, pipe, cond, uncond, TorchRuntime(args.device, show_progress=False))
    report_setup(case_args, family, ours, rounds=f"1 warm-up step each, then {repeats} alternating pair(s)")
    logger.info("%s: %d tokens per model call, %.1f GB of weights", key, case.tokens, model_bytes(ours) / GB)
    return case


# ---- timing ---------------------------------------------------------------------------------

@dataclass
class Measured:
    s_per_step: list[float] = field(default_factory=list)
    peaks: list[Peak] = field(default_factory=list)
    latents: torch.Tensor | None = None

    def add(self, seconds: float, steps: int, peak: Peak, latents: torch.Tensor) -> None:
        self.s_per_step.append(seconds / steps)
        self.peaks.append(peak)
        self.latents = latents

    @property
    def median(self) -> float:
        return statistics.median(self.s_per_step)

    def peak_gb(self) -> tuple[float | None, float | None]:
        """(max peak, max working memory) in GB over the runs, None off CUDA."""
        if not self.peaks or self.peaks[0].peak is None:
            return None, None
        return max(p.peak for p in self.peaks) / GB, max(p.work for p in self.peaks) / GB


def measure(fn: Callable[[], torch.Tensor], steps: int, device: str, into: Measured) -> None:
    """One timed run of ``steps`` steps (synchronised), its peak memory and latents."""
    out: dict[str, torch.Tensor] = {}
    with Peak(device) as peak:
        seconds = timed(lambda: out.update(latents=fn()), device)
    into.add(seconds, steps, peak, out["latents"])


@dataclass
class Comparison:
    ours: Measured
    diffusers: Measured

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios ours / diffusers (robust to drift)."""
        return statistics.median(o / d for o, d in zip(self.ours.s_per_step, self.diffusers.s_per_step))


def compare(case: Case) -> Comparison:
    """Warm-up, then alternating timed pairs of our plain run and diffusers' eager run."""
    steps, device = case.args.steps, case.args.device
    case.run_ours(case.ours, 1), case.run_diffusers(1)  # warm-up: kernels, tables, allocator
    ours, ref = Measured(), Measured()
    for i in range(case.args.repeats):
        order = [(ours, lambda: case.run_ours(case.ours, steps)), (ref, lambda: case.run_diffusers(steps))]
        for into, fn in order if i % 2 == 0 else order[::-1]:
            measure(fn, steps, device, into)
    return Comparison(ours, ref)


# ---- FLOPs, MFU, parity ---------------------------------------------------------------------

def flops_per_step(cfg: TransformerConfig, tokens: int, cfg_batch: int = 2) -> float:
    """Matmul FLOPs of one sampling step: per block 2 T d^2 (4 + 8) for q/k/v/out and the 4x
    feed-forward, plus 4 T^2 d for QK^T and PV; times layers, times the CFG batch."""
    d = cfg.inner_dim
    per_block = 2 * tokens * d * d * (4 + 8) + 4 * tokens ** 2 * d
    return cfg_batch * cfg.num_layers * per_block


def peak_flops(args: argparse.Namespace) -> float | None:
    """The device's dense bf16 FLOP/s: ``--peak-tflops``, the table by name, or None."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.tiny:
        return TINY_PEAK
    if not is_cuda(args.device):
        return None
    name = torch.cuda.get_device_name(torch.device(args.device))
    found = next((flops for key, flops in PEAK_FLOPS if key in name), None)
    if found is None:
        logger.warning("no bf16 peak known for %r: pass --peak-tflops for the MFU", name)
    return found


def mfu(case: Case, s_per_step: float, peak: float | None) -> float | None:
    return None if peak is None else flops_per_step(case.family.transformer, case.tokens) / s_per_step / peak


def check_parity(case: Case, comparison: Comparison, report: Report) -> tuple[float, float]:
    """(max abs diff, relative RMS diff) of our latents vs diffusers'; a failure is recorded."""
    a, b = comparison.ours.latents.float(), comparison.diffusers.latents.float()
    maxdiff = (a - b).abs().max().item()
    rel = ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12)).item()
    fp32 = case.args.dtype == "float32"
    ok = maxdiff <= FP32_MAXDIFF if fp32 else rel <= LOW_PRECISION_RTOL
    if not ok or not math.isfinite(maxdiff):
        rule = f"max abs diff <= {FP32_MAXDIFF:g}" if fp32 else f"relative RMS diff <= {LOW_PRECISION_RTOL:g}"
        report.parity_failures.append(f"{case.key}: ours vs diffusers max abs diff {maxdiff:.3g}, relative RMS "
                                      f"{rel:.3g}; required {rule}")
        logger.error("parity FAILED: %s", report.parity_failures[-1])
    return maxdiff, rel


# ---- sections ---------------------------------------------------------------------------

def plain_section(case: Case, args: argparse.Namespace, report: Report) -> None:
    """Ours vs diffusers eager: s/step, ratio, MFU, peaks, parity."""
    comparison = case.baseline = compare(case)
    maxdiff, rel = check_parity(case, comparison, report)
    peak = peak_flops(args)
    for name, m in (("diffusers eager", comparison.diffusers), ("ours plain", comparison.ours)):
        p, w = m.peak_gb()
        ratio = comparison.ratio if name.startswith("ours") else 1.0
        note = f"parity max abs {maxdiff:.2g}, rel RMS {rel:.2g}" if name.startswith("ours") else ""
        report.add(Row(case.key, name, m.median, ratio, mfu(case, m.median, peak), p, w, note=note))
    ours_peak, _ = comparison.ours.peak_gb()
    ref_peak, _ = comparison.diffusers.peak_gb()
    prefix = "" if case.key == "5b" else "_15"
    report.values.update({f"step_ratio{prefix}": comparison.ratio,
                          f"mfu{prefix}": mfu(case, comparison.ours.median, peak),
                          f"sampling_peak_ratio{prefix}": None if ours_peak is None else ours_peak / ref_peak,
                          f"parity_maxdiff{prefix}": maxdiff})


def random_vae(cfg: VAEConfig, dtype: torch.dtype, device: str) -> tuple[CogVideoXVAE, AutoencoderKLCogVideoX]:
    """Our VAE and diffusers', built on meta, sharing one set of random tensors on ``device``."""
    ours = CogVideoXVAE(cfg, dtype=dtype, device="meta")
    ours.load_state_dict(random_state(ours, dtype, device, seed=1), strict=True, assign=True)
    check_materialised(ours, "our VAE")
    with torch.device("meta"):
        ref = AutoencoderKLCogVideoX(**cfg.to_diffusers())
    ref.load_state_dict(ours.state_dict(), strict=True, assign=True)
    check_materialised(ref, "diffusers' VAE")
    return ours.eval(), ref.eval()


def decode_section(args: argparse.Namespace, report: Report) -> None:
    """Peak memory of our exact tiled decode (auto tiles, diffusers' tile) vs diffusers' tiling."""
    name, frames, height, width = (TINY_SIZES if args.tiny else SIZES)["5b"]
    family = get_family(name)
    cfg = tiny_vae_config(family) if args.tiny else VAEConfig()
    tile = TINY_DECODE_TILE if args.tiny else DECODE_TILE
    ours, ref = random_vae(cfg, getattr(torch, args.dtype), args.device)
    ref.enable_tiling(tile_sample_min_height=tile[0], tile_sample_min_width=tile[1])
    gen = torch.Generator(device=args.device).manual_seed(2)
    s = SPATIAL_COMPRESSION
    z = torch.randn((1, cfg.latent_channels, latent_frames(frames), height // s, width // s), generator=gen,
                    device=args.device, dtype=ours.dtype)  # [1, 16, 13, 60, 90] at full size
    ours.decode(z[:, :, :1, :4, :4]), ref.decode(z[:, :, :1, :4, :4])  # warm-up: kernels, allocator
    runtime = TorchRuntime(args.device, show_progress=False)
    runs = {"ours exact tiled, auto tiles (decode_latents)": lambda: decode_latents(ours, z, runtime),
            f"ours exact tiled, {tile[0]}x{tile[1]} tiles": lambda: tiled_decode(
                ours, z, tile=tile, runtime=runtime, progress=no_progress),
            f"diffusers enable_tiling {tile[0]}x{tile[1]}": lambda: ref.decode(z).sample}
    peaks = [decode_row(label, fn, z, model_bytes(ours), args, report) for label, fn in runs.items()]
    auto, fixed, reference = peaks
    report.values.update(decode_peak_gb=fixed, decode_auto_peak_gb=auto,
                         decode_peak_ratio=None if fixed is None else fixed / reference)


def decode_row(label: str, fn: Callable[[], torch.Tensor], z: torch.Tensor, weights: int,
               args: argparse.Namespace, report: Report) -> float | None:
    """One decode's row; returns its peak in GB (working memory + one VAE's weights), None off CUDA."""
    seconds, peak = decode_once(fn, args.device)
    total = None if peak.work is None else (peak.work + weights) / GB
    report.add(Row("decode", label, None, None, None, total, None if peak.work is None else peak.work / GB,
                   note=f"{'x'.join(map(str, z.shape[2:]))} latents, one run {seconds:.2f} s; peak = work + "
                   f"{weights / GB:.2f} GB weights"))
    return total


def decode_once(fn: Callable[[], torch.Tensor], device: str) -> tuple[float, Peak]:
    with Peak(device) as peak:
        seconds = timed(fn, device)
    return seconds, peak


# ---- variants -----------------------------------------------------------------------------

@dataclass
class Prepared:
    """A variant ready to run: ``model`` sampled with ``cache`` for ``steps`` steps per run."""

    model: nn.Module
    steps: int
    cache: CacheOptions | None = None
    note: str = ""


def fp8_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The block matmul weights (``FP8_TRANSFORMER_KEYS``) as float8_e4m3fn copies, the rest shared."""
    return {k: v.to(torch.float8_e4m3fn) if FP8_TRANSFORMER_KEYS.match(k) else v for k, v in state.items()}


def fp8_ops() -> tuple[Ops, str]:
    try:
        return optional("cogvideox_core.ops", "fp8_matmul_ops"), "fp8_matmul_ops"  # type: ignore[return-value]
    except Unavailable as e:
        return cast_ops, f"cast_ops: {e} (weights upcast per call)"


def attention_fn(name: str, case: Case) -> AttentionFn:
    select = optional("cogvideox_core.attention", "select_attention")
    try:
        return select(name, torch.device(case.args.device), getattr(torch, case.args.dtype))  # type: ignore[operator]
    except (ValueError, RuntimeError, ImportError) as e:  # the backend cannot run here: said, not measured
        raise Unavailable(f"attention {name!r}: {e}") from None


def compiled(model: CogVideoXTransformer) -> CogVideoXTransformer:
    """``model`` with its blocks compiled in place; :class:`Unavailable` where torch.compile
    cannot run here (``CompileError``: no compiler for the device)."""
    compile_blocks = optional("cogvideox_core.models.compile", "compile_blocks")
    compile_error = optional("cogvideox_core.models.compile", "CompileError")
    try:
        compile_blocks(model)  # type: ignore[operator]
    except compile_error as e:  # type: ignore[misc]
        raise Unavailable(f"compile: {e}") from None
    return model


def cache_variant(method: str) -> Callable[[Case, argparse.Namespace], Prepared]:
    def make(case: Case, args: argparse.Namespace) -> Prepared:
        if method not in step_cache.METHODS:
            raise Unavailable(f"{method!r} not in cogvideox_core.models.step_cache.METHODS")
        options = CacheOptions(method)
        if method in ("teacache", "fbc"):
            note = f"default threshold {options.resolved_threshold(case.family.conditioning):g}"
        else:
            note = "diffusers' default settings"
        return Prepared(case.ours, args.cache_steps, options, note)
    return make


def attention_variant(name: str) -> Callable[[Case, argparse.Namespace], Prepared]:
    def make(case: Case, args: argparse.Namespace) -> Prepared:
        fn = attention_fn(name, case)
        return Prepared(transformer_like(case.family.transformer, case.ours.state_dict(), attention=fn), args.steps)
    return make


def compile_variant(case: Case, args: argparse.Namespace) -> Prepared:
    model = transformer_like(case.family.transformer, case.ours.state_dict())
    return Prepared(compiled(model), args.steps)


def fp8_variant(case: Case, args: argparse.Namespace) -> Prepared:
    ops, note = fp8_ops()
    return Prepared(transformer_like(case.family.transformer, fp8_state(case.ours.state_dict()), ops=ops),
                    args.steps, note=note)


def probed_attention(name: str, case: Case) -> AttentionFn:
    """:func:`attention_fn`, also :class:`Unavailable` when one small call of it fails (a kernel
    package that imports but cannot run on this GPU), so that the combination falls back."""
    fn = attention_fn(name, case)
    heads, head_dim = case.family.transformer.num_heads, case.family.transformer.head_dim
    q = torch.randn(2, 64, heads * head_dim, device=case.args.device, dtype=getattr(torch, case.args.dtype))
    try:
        fn(q, q, q, heads)
    except Exception as e:  # noqa: BLE001 - any failure of the backend's kernel: the next one is tried
        logger.warning("attention %r failed a probe call: %s", name, e)
        raise Unavailable(f"attention {name!r} failed a probe call: {type(e).__name__}: {e}"[:200]) from None
    return fn


def best_variant(case: Case, args: argparse.Namespace) -> Prepared:
    """sage, else flash (else sdpa, said) + compile + fp8."""
    missing: list[str] = []
    name, fn = "sdpa", sdpa_attention
    for candidate in ("sage", "flash"):
        try:
            name, fn = candidate, probed_attention(candidate, case)
            break
        except Unavailable as e:
            missing.append(str(e))
            name, fn = "sdpa", sdpa_attention
    ops, ops_note = fp8_ops()
    model = transformer_like(case.family.transformer, fp8_state(case.ours.state_dict()), ops=ops, attention=fn)
    note = f"{name} + compile + fp8 ({ops_note})" + (f"; {'; '.join(missing)}" if name == "sdpa" else "")
    return Prepared(compiled(model), args.steps, note=note)


VARIANTS: dict[str, Callable[[Case, argparse.Namespace], Prepared]] = {
    **{f"attention {a}": attention_variant(a) for a in ATTENTIONS},
    "compile": compile_variant,
    "fp8": fp8_variant,
    "best: sage or flash + compile + fp8": best_variant,
    **{f"cache {m}": cache_variant(m) for m in CACHE_METHODS},
}


class CacheSummary(logging.Handler):
    """The last step cache summary our core logs ("step cache <method>: N of M ... ran; held ...")."""

    PREFIX = "step cache "

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            self.last = message[len(self.PREFIX):]


def run_variant(case: Case, prepared: Prepared) -> tuple[Measured, str]:
    """Warm-up (1 step: compiles, tables), then timed runs; a cache's summary of its last run."""
    summary = CacheSummary()
    log = logging.getLogger(CACHE_LOGGER)
    log.addHandler(summary)
    try:
        case.run_ours(prepared.model, 1, prepared.cache)
        measured = Measured()
        for _ in range(case.args.variant_repeats):
            measure(lambda: case.run_ours(prepared.model, prepared.steps, prepared.cache), prepared.steps,
                    case.args.device, measured)
    finally:
        log.removeHandler(summary)
    return measured, summary.last


def variant_row(case: Case, name: str, make: Callable[[Case, argparse.Namespace], Prepared],
                args: argparse.Namespace, report: Report) -> Row:
    """One variant measured, or its row saying why not (the error logged with the name)."""
    if args.budget_s and report.elapsed() > args.budget_s:
        return Row("variants", name, note=f"skipped: past --budget-s {args.budget_s:g}")
    try:
        return measure_variant(case, name, make, args)
    except Unavailable as e:
        return Row("variants", name, note=f"not available: {e}")
    except Exception as e:  # noqa: BLE001 - one variant failing must not stop the others
        logger.exception("variant %r failed", name)
        return Row("variants", name, note=f"error: {type(e).__name__}: {e}"[:200])
    finally:
        free_memory(args.device)  # the variant's model (fp8 copies, compiled blocks) is gone by now


def measure_variant(case: Case, name: str, make: Callable[[Case, argparse.Namespace], Prepared],
                    args: argparse.Namespace) -> Row:
    prepared = make(case, args)
    measured, blocks = run_variant(case, prepared)
    return finished_row(case, name, prepared, measured, blocks, args)


def finished_row(case: Case, name: str, prepared: Prepared, measured: Measured,
                 blocks: str, args: argparse.Namespace) -> Row:
    base = case.baseline
    note = prepared.note
    if prepared.cache is None and base is not None and base.ours.latents is not None:
        diff = (measured.latents.float() - base.ours.latents.float()).abs().max().item()
        note = f"{note}; max abs diff vs ours plain {diff:.2g}".lstrip("; ")
    p, w = measured.peak_gb()
    ratio = None if base is None else measured.median / base.diffusers.median
    flops = None if prepared.cache is not None else mfu(case, measured.median, peak_flops(args))
    return Row("variants", name, measured.median, ratio, flops, p, w, blocks, note)


def variants_section(case: Case, args: argparse.Namespace, report: Report) -> None:
    if case.baseline is None:  # --only variants: the diffusers eager baseline first
        plain_section(case, args, report)
    for name, make in VARIANTS.items():
        report.add(variant_row(case, name, make, args, report))  # logged as it comes: a timeout keeps them
    best = next(r for r in report.rows if r.run.startswith("best"))
    report.values.update(best_ratio=best.ratio, best_speedup=None if not best.ratio else 1 / best.ratio)


# ---- output ---------------------------------------------------------------------------------

def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def print_table(report: Report, args: argparse.Namespace) -> None:
    if args.tiny:
        print(f"\n**--tiny: 2-layer 2x16-head models on the {args.device} in {args.dtype}. These times, ratios and "
              "MFU (against a fake 1 TFLOP/s peak) mean nothing: this run checks the script and the parity only.**\n")
    print("| section | run | s/step | vs diffusers eager | MFU | peak GB | work GB | blocks run | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report.rows:
        note = r.note.replace("|", "/")  # a cell's own bar would split it
        print(f"| {r.section} | {r.run} | {fmt(r.s_per_step, '.4f')} | {fmt(r.ratio, '.3f')} | "
              f"{fmt(None if r.mfu is None else 100 * r.mfu, '.3g')}{'%' if r.mfu is not None else ''} | "
              f"{fmt(r.peak_gb, '.2f')} | {fmt(r.work_gb, '.2f')} | {r.blocks} | {note} |")


RESULT_KEYS = ("step_ratio", "best_ratio", "best_speedup", "mfu", "sampling_peak_ratio", "decode_peak_gb",
               "decode_auto_peak_gb", "decode_peak_ratio", "step_ratio_15", "mfu_15", "sampling_peak_ratio_15",
               "parity_maxdiff", "parity_maxdiff_15")


def result_line(report: Report) -> str:
    v = report.values
    parts = [f"{k}={fmt(v.get(k), '.3g')}" for k in RESULT_KEYS]
    return "RESULT gpu " + " ".join(parts)


class Cases:
    """The one case alive at a time (a full-size model's weights are 11 GB): the last one is
    dropped before the next is built."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.current = args, None

    def get(self, key: str) -> Case:
        if self.current is None or self.current.key != key:
            self.current = None
            free_memory(self.args.device)
            self.current = make_case(key, self.args)
        return self.current


def run_section(section: str, cases: Cases, args: argparse.Namespace, report: Report) -> None:
    if section == "decode":
        decode_section(args, report)
        free_memory(args.device)  # the VAEs went with the section's locals
    elif section == "variants":
        variants_section(cases.get("5b"), args, report)
    else:
        plain_section(cases.get(section), args, report)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    report, cases = Report(), Cases(args)
    with torch.no_grad():
        for section in (s for s in SECTIONS if s in args.only):
            if args.budget_s and report.elapsed() > args.budget_s:
                report.add(Row(section, "(section)", note=f"skipped: past --budget-s {args.budget_s:g}"))
                continue
            logger.info("section %s at %.0f s", section, report.elapsed())
            run_section(section, cases, args, report)
    return finish(report, args)


def finish(report: Report, args: argparse.Namespace) -> int:
    """Prints the table, the RESULT line and any parity failure; the exit status (1: parity failed)."""
    print_table(report, args)
    print(result_line(report))
    for failure in report.parity_failures:
        print(f"PARITY FAILED {failure}")
    return 1 if report.parity_failures else 0


if __name__ == "__main__":
    sys.exit(main())
