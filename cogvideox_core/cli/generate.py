"""``generate`` and ``demo``: the commands of :mod:`cogvideox_core.cli.main` that make videos.

``generate`` makes one video from a model on disk (a diffusers tree, a transformer folder or one
``.safetensors`` file, with ``--vae``/``--text-encoder`` where needed), checking the request
against the family read from the file headers before any weights load; ``--out`` is an ``.mp4``
(H.264 at the family's frame rate) or a ``.safetensors`` of the frames (key ``frames``, float32
0..1, [F, H, W, C]). Long videos: ``--context-*`` (windows in one run) and ``--extend-*`` (a
chain of generations), which combine. ``demo`` runs ``generate`` on the tiny models trained on
moving shapes and shipped in the pack (``--random``: a tiny random model of any family through the
whole chain). Heavy modules are imported inside the commands, so ``info`` stays instant.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from . import batch as batch_cli
from . import preflight
from .batch import add_batch_flags

logger = logging.getLogger(__name__)

def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``generate`` and ``demo`` on the CLI's subparsers."""
    _add_generate(sub)
    _add_demo(sub)


# ---- generate -------------------------------------------------------------------------------

def _add_generate(sub: argparse._SubParsersAction) -> None:
    from ..loading.weights import COMPUTE_DTYPES
    from ..models.step_cache import METHODS
    from ..sampling import SAMPLER_NAMES

    p = sub.add_parser("generate", help="make a video from a model on disk",
                       description="Text/image/video-to-video with a CogVideoX model on disk.")
    p.add_argument("--model", required=True, help="model root, transformer folder or .safetensors file")
    p.add_argument("--vae", help="VAE folder or file (default: from --model)")
    p.add_argument("--text-encoder", help="T5 encoder folder or file (default: from --model)")
    p.add_argument("--family", help="family name where the weights cannot tell (see `info`)")
    _add_lora(p)
    p.add_argument("--prompt", help="what the video shows (required unless --prompts-file)")
    p.add_argument("--negative", default="", help="negative prompt (default: empty)")
    p.add_argument("--image", action="append", help="start image; repeat for several known start "
                   "frames (Fun InP)")
    p.add_argument("--end-image", help="end image (Fun InP)")
    p.add_argument("--video", help="source video: video-to-video, or the video to inpaint with --mask")
    p.add_argument("--mask", help="mask image or video for --video (white = generate; Fun InP)")
    p.add_argument("--control", help="control video (Fun Control/Pose)")
    p.add_argument("--denoise", type=float, default=1.0, help="video-to-video strength (0, 1]")
    p.add_argument("--frames", type=int, help="4k+1 frames (default: the family's)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=6.0)
    p.add_argument("--dynamic-cfg", choices=("diffusers", "step"))
    p.add_argument("--cfg-sequential", action="store_true", help="uncond and cond in two model "
                   "calls (less memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", choices=("none", *METHODS), default="none",
                   help="step cache: less transformer work on steps whose input barely changed, faster "
                        "and slightly different frames: teacache / fbc skip blocks (First Block Cache), "
                        "pab reuses attention (Pyramid Attention Broadcast), fastercache also rebuilds "
                        "the unconditional branch (needs --cfg > 1; the most memory)")
    p.add_argument("--cache-threshold", type=float, help="teacache/fbc threshold > 0, higher skips more "
                   "(default: TeaCache 0.2 text-to-video, 0.1 image-to-video; First Block Cache 0.05)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, help="default: the family's recommended one")
    p.add_argument("--dtype", choices=[str(d).removeprefix("torch.") for d in COMPUTE_DTYPES.values()],
                   help="default: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    _add_speed(p)
    _add_long_video(p)
    add_batch_flags(p)
    p.add_argument("--parallel", help="under torchrun: cfg=2 (the two guidance branches on two processes), "
                   "ulysses=K (the video tokens split over K processes; K must divide the family's heads), "
                   "or both, e.g. cfg=2,ulysses=2 on 4 processes: `torchrun --nproc-per-node 4 -m "
                   "cogvideox_core generate ... --parallel cfg=2,ulysses=2`; the same video as one process")
    p.add_argument("--out", required=True, help="output .mp4 or .safetensors (with batch flags: the "
                   "name the outputs and the manifest are named after)")
    p.set_defaults(run=run_generate)


def _add_lora(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", metavar="PATH[:STRENGTH]",
                   help="a LoRA .safetensors file (diffusers/PEFT or kohya keys) merged into the "
                        "transformer at STRENGTH (default 1, from -10 to 10; negative inverts it); repeat for several")


def _add_speed(p: argparse.ArgumentParser) -> None:
    from ..attention import ATTENTION_CHOICES
    from .storage import WEIGHT_DTYPE_CHOICES

    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="sdpa",
                   help="sdpa (default): torch's choice of exact kernel; flash: torch's FlashAttention "
                        "only (CUDA, bf16/fp16); sage: SageAttention (faster, int8 q/k: close, not equal; "
                        "pip install sageattention); auto: sage if the package and the GPU can run it, "
                        "else flash, else sdpa")
    p.add_argument("--weight-dtype", choices=WEIGHT_DTYPE_CHOICES, default="auto",
                   help="storage of the transformer blocks' matmul weights (--dtype stays the compute "
                   "dtype): auto (default) keeps fp8 files (plain or ComfyUI scaled fp8) in fp8, others "
                   "in the compute dtype; bf16/fp16/fp32 (the compute dtype too unless --dtype says "
                   "it); fp8_e4m3fn/fp8_e5m2 (half the memory of bf16; fp8_e4m3fn runs scaled fp8 "
                   "matmuls on GPUs of compute capability 8.9+); int8 (weight-only, per output "
                   "channel scales: about half of bf16's memory, dequantized at each matmul)")
    p.add_argument("--no-fp8-matmul", action="store_true", help="with --weight-dtype fp8_e4m3fn: cast "
                   "the weights to the compute dtype at each matmul instead (slower, closer to bf16)")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block "
                   "(inductor; needs triton on a GPU, a C++ compiler on the CPU): the first step is "
                   "slower (compiling, tens of seconds), later steps faster; same frames within "
                   "rounding")


def _transformer_options(args: argparse.Namespace, device, dtype) -> dict[str, Any]:
    """Attention, fp8 storage and fp8 matmuls for ``load_transformer``, refused here (before any
    weights load) when they cannot run on ``device`` in ``dtype``."""
    import torch

    from ..attention import select_attention
    from .storage import storage_dtype

    weight_dtype = storage_dtype(args, dtype)
    if args.no_fp8_matmul and weight_dtype != torch.float8_e4m3fn:
        raise ValueError(f"--no-fp8-matmul with --weight-dtype {args.weight_dtype} ({weight_dtype or dtype} "
                         "block weights): fp8 matmuls only run on fp8_e4m3fn weights; give "
                         "--weight-dtype fp8_e4m3fn or drop --no-fp8-matmul")
    return {"attention": select_attention(args.attention, device, dtype),
            "weight_dtype": weight_dtype, "fp8_compute": not args.no_fp8_matmul}


def _add_long_video(p: argparse.ArgumentParser, prompts_file: bool = True, context_weights: str = "pyramid") -> None:
    """The long-video flags (``demo``: its own weights default, no ``--prompts-file``)."""
    from ..sampling.windows import SCHEDULES, WEIGHTINGS

    g = p.add_argument_group("long video", "context windows inside one run, or a chain of runs")
    g.add_argument("--context-frames", type=int, help="context window length in frames (long videos)")
    g.add_argument("--context-overlap", type=int, default=16, help="context window overlap in frames")
    g.add_argument("--context-schedule", choices=tuple(SCHEDULES), default="static",
                   help="static windows, uniform (seams move every step) or looped (seamless loops)")
    g.add_argument("--context-weights", choices=WEIGHTINGS, default=context_weights,
                   help="pyramid ramps or flat averages over the overlaps; causal: each frame from the first "
                   "window covering it (later windows continue earlier ones)")
    g.add_argument("--context-batch", type=int, default=1, help="windows per model call (memory)")
    g.add_argument("--extend-chunks", type=int, default=1, help="chunks of --frames frames in a chain "
                   "(1: one generation); each starts from the tail of the video so far")
    g.add_argument("--extend-overlap", type=int, default=4, help="frames shared by chained chunks "
                   "(Fun InP: known frames; image-to-video families: 1)")
    g.add_argument("--colour-match", type=float, default=1.0, help="match chunk colours to the first "
                   "chunk's, 0..1 (0: off)")
    if prompts_file:
        g.add_argument("--prompts-file", help="text file, one prompt per chunk per line (replaces --prompt)")


def run_generate(args: argparse.Namespace) -> int:
    """Judge everything that can be judged from flags, headers and media files, then load,
    generate and write. Interrupts (SIGINT, SIGTERM) stop at the next step; nothing is written."""
    from .signals import interrupts_to
    from .storage import compute_dtype
    from ..runtime import TorchRuntime
    from ..video_io import write_frames

    start = time.monotonic()
    preflight.check_numbers(args)
    device = preflight.check_device(args.device)
    out = preflight.check_out(args)
    items = _batch_items(args, out)  # None: one video
    sizes = preflight.check_components(args)
    preflight.check_loras(args, fit=True)
    family = _family_from_headers(args.model, args.family)
    request, chain, plan = _request(args, family, None if items is None else items[0].prompt)
    parallel = _parallel(args, family, request, items, chain)
    if parallel is not None:
        return _run_parallel(args, parallel, family, request, plan, device, out, sizes, start)
    dtype = compute_dtype(args, device)
    options = _transformer_options(args, device, dtype)
    _check_compile(args, device)  # before any weights load
    runtime = TorchRuntime(device=device)
    preflight.check_memory(family, request, plan, dtype, device, runtime.free_memory(), sizes,
                           options["weight_dtype"])
    with interrupts_to(runtime):
        models = _load(args, family.name, dtype, runtime, options)
        _compile(args, models, device)
        runtime.check_interrupt()
        if items is not None:
            made = batch_cli.run_job(args, models, request, plan, runtime, out, items)
            sys.stdout.write(f"wrote {made} videos ({batch_cli.output_path(out, items[0]).name} ... "
                             f"{batch_cli.output_path(out, items[-1]).name}) and "
                             f"{batch_cli.manifest_path(out)}, {time.monotonic() - start:.1f} s\n")
            return 0
        frames = _generate(models, request, runtime, chain)
        runtime.check_interrupt()  # a signal during the decode's last chunk
        write_frames(frames, out, models.family.fps)
    sys.stdout.write(f"wrote {out} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, "
                     f"{models.family.name}, {time.monotonic() - start:.1f} s)\n")
    return 0


def _parallel(args: argparse.Namespace, family, request, items, chain):
    """``--parallel``'s config, checked against the run before anything joins or loads (None without it)."""
    if args.parallel is None:
        return None
    from ..parallel import ParallelConfig, check_family

    config = ParallelConfig.parse(args.parallel)
    for given, what in ((items, "batch flags (--prompt-list, --seeds, --count)"), (chain, "--extend-chunks")):
        if given is not None:
            raise ValueError(f"--parallel {args.parallel} with {what}: not supported yet; run one video a launch")
    check_family(family, request, config)
    return config


def _run_parallel(args: argparse.Namespace, config, family, request, plan, device, out: Path, sizes,
                  start: float) -> int:
    """One video on every rank of a torchrun launch; rank 0 decodes and writes it."""
    from .signals import interrupts_to
    from .storage import compute_dtype
    from .. import parallel
    from ..runtime import TorchRuntime
    from ..video_io import write_frames

    mesh, device = parallel.init_from_env(config, device.type)
    try:
        parallel.quiet_other_ranks(mesh)
        dtype = compute_dtype(args, device)
        options = _transformer_options(args, device, dtype)
        _check_compile(args, device)
        runtime = TorchRuntime(device=device, show_progress=mesh.is_first)
        preflight.check_memory(family, request, plan, dtype, device, runtime.free_memory(), sizes,
                               options["weight_dtype"])
        with interrupts_to(runtime):
            models = _load(args, family.name, dtype, runtime, options)
            _compile(args, models, device)
            frames = parallel.generate(models, request, mesh, runtime)
            if frames is not None:  # rank 0
                write_frames(frames, out, models.family.fps)
                sys.stdout.write(f"wrote {out} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, "
                                 f"{models.family.name}, --parallel {config} on {config.world_size} "
                                 f"processes, {time.monotonic() - start:.1f} s)\n")
    finally:
        parallel.close()
    return 0


def _batch_items(args: argparse.Namespace, out: Path):
    """The batch job's items with their output names judged (None without batch flags)."""
    if not batch_cli.is_batch(args):
        return None
    batch_cli.check_flags(args)
    items = batch_cli.job_items(args)
    batch_cli.check_outputs(args, out, items)
    return items


def _check_compile(args: argparse.Namespace, device) -> None:
    if args.compile:
        from ..models.compile import check_compile_support

        check_compile_support(device)


def _compile(args: argparse.Namespace, models, device) -> None:
    """``--compile``: the transformer's blocks compile in place on their first call."""
    if args.compile:
        from ..models.compile import compile_blocks

        compile_blocks(models.transformer, device=device)


def _family_from_headers(model: str, family: str | None):
    """The family and transformer config from headers only (no weights read)."""
    import dataclasses

    from ..families import get_family
    from ..loading.weights import detect_family, find_component

    comp = find_component(model, "transformer")
    try:
        name, cfg = detect_family(comp, family)
    except ValueError as e:
        if family is None:
            raise
        raise ValueError(f"--family {family}: {e}") from None
    return dataclasses.replace(get_family(name), transformer=cfg)


def _request(args: argparse.Namespace, family, prompt: str | None = None):
    """(request, chain options or None, plan) with the inputs read from files, checked against
    ``family`` before any weights are loaded (cheap); ``prompt``: a batch job's first."""
    import dataclasses

    from ..generation.conditioning import plan_conditioning
    from ..generation.pipeline import GenerateRequest

    prompts = [prompt] if prompt is not None else _prompts(args)
    inputs = _inputs(args)
    chain = _chain(args, prompts, inputs.end_image)
    if chain is not None:
        inputs = dataclasses.replace(inputs, end_image=None)  # on the chain's last chunk instead
    context = _context(args)
    request = GenerateRequest(
        prompt=prompts[0], negative_prompt=args.negative, inputs=inputs, frames=args.frames,
        height=args.height, width=args.width, steps=args.steps, cfg=args.cfg,
        dynamic_cfg=args.dynamic_cfg, cfg_batched=not args.cfg_sequential, sampler=args.sampler,
        seed=args.seed, context=context, cache=_cache(args))
    plan = plan_conditioning(family, inputs, args.frames, args.height, args.width,
                             windowed=context is not None)  # refuse before loading
    if Path(args.out).suffix.lower() == ".mp4":
        from ..video_io import check_mp4_size

        check_mp4_size(plan.height, plan.width, name="--out .mp4: frames")
    if context is not None:
        context.to_latent(family)
    if chain is not None:
        from ..long_video.chain import check_tail

        check_tail(family, chain, plan.frames, plan.height, plan.width)
    return request, chain, plan


def _prompts(args: argparse.Namespace) -> list[str]:
    """The prompts file's non-empty lines, else ``--prompt``."""
    lines = preflight.check_prompts_file(args)
    if lines is not None:
        return lines
    if args.prompt is None:
        raise ValueError("--prompt is missing: give --prompt TEXT or --prompts-file FILE")
    return [args.prompt]


def _context(args: argparse.Namespace):
    from ..sampling.windows import ContextOptions

    if args.context_frames is None:
        return None
    return ContextOptions(args.context_frames, args.context_overlap, args.context_schedule,
                          args.context_weights, args.context_batch)


def _cache(args: argparse.Namespace):
    from ..models.step_cache import CacheOptions

    if args.cache == "none":
        return None
    if args.context_frames is not None:
        raise ValueError(f"--cache {args.cache} with --context-frames: not supported (the cache would "
                         "add one window's residuals to another); use one of them")
    return CacheOptions(args.cache, args.cache_threshold)


def _chain(args: argparse.Namespace, prompts: list[str], end_image):
    """Chain options for ``--extend-chunks`` > 1 (or a prompts file), else None."""
    from ..long_video.chain import ChainOptions

    if args.extend_chunks == 1 and len(prompts) == 1:
        return None
    if args.prompts_file is not None and len(prompts) != args.extend_chunks:
        raise ValueError(f"--prompts-file {args.prompts_file}: {len(prompts)} prompts for "
                         f"--extend-chunks {args.extend_chunks}: give one per chunk")
    return ChainOptions(args.extend_chunks, args.extend_overlap, args.colour_match, end_image,
                        prompts if args.prompts_file is not None else None)


def _inputs(args: argparse.Namespace):
    import torch

    from ..generation.conditioning import ConditioningInputs
    from ..video_io import read_image, read_video

    def media(name: str, reader):
        path = getattr(args, name)
        return None if path is None else preflight.read_media(name, path, reader)

    def clip(path: str, label: str) -> torch.Tensor:
        return read_video(path, label=label)[0]

    images = [preflight.read_media("image", f, read_image) for f in args.image or []]
    image = _same_size("image", images, args.image) if images else None
    mask = media("mask", clip)
    return ConditioningInputs(
        image=image, end_image=media("end_image", read_image), video=media("video", clip),
        mask=None if mask is None else mask.mean(dim=-1),  # [F, H, W]
        control=media("control", clip), denoise=args.denoise)


def _same_size(name: str, images: list, paths: list[str]):
    import torch

    sizes = {tuple(i.shape[1:3]) for i in images}
    if len(sizes) > 1:
        listed = ", ".join(f"{p} {i.shape[2]}x{i.shape[1]}" for p, i in zip(paths, images))
        raise ValueError(f"--{name}: the known frames differ in size ({listed}): give images of one size")
    return torch.cat(images)


def _load(args: argparse.Namespace, family: str, dtype, runtime, options: dict[str, Any] | None = None):
    from ..generation.pipeline import Models
    from ..loading.lora_apply import apply_lora
    from ..loading.text import load_text_encoder
    from ..loading.weights import load_scheduler_config, load_transformer, load_vae

    device = runtime.device
    transformer, fam = load_transformer(args.model, dtype, device, family=family, **(options or {}))
    for path, strength in preflight.check_loras(args):
        apply_lora(transformer, path, strength)
    vae = load_vae(args.vae or args.model, dtype, device)
    text = load_text_encoder(args.text_encoder or args.model, dtype, device)
    return Models(transformer.eval(), fam, vae.eval(), text, load_scheduler_config(args.model))


def _generate(models, request, runtime, chain=None):
    from ..long_video.chain import generate_long
    from ..generation.pipeline import generate

    if chain is None:
        return generate(models, request, runtime)
    return generate_long(models, request, chain, runtime)


# ---- demo -----------------------------------------------------------------------------------

def _add_demo(sub: argparse._SubParsersAction) -> None:
    from ..families import FAMILY_NAMES
    from .demo import DEFAULT_CFG, DEFAULT_PROMPT, DEFAULT_STEPS, LORA_HELP, PROMPT_HELP, RANDOM_SIZE, TRAINED_SIZE

    p = sub.add_parser("demo", help="make a video with the tiny models shipped in the pack (seconds, CPU)",
                       description="Run prompt -> sampling -> decode -> mp4 on the tiny CogVideoX models "
                                   "trained on a synthetic world of moving shapes and shipped in the pack "
                                   "(cogvideox_core/data/tiny_world: text-to-video, and Fun InP for "
                                   "--image/--end-image/--extend-chunks) through `generate`; --random: a "
                                   "tiny random model of any family.")
    p.add_argument("--out", default="cogvideox_demo.mp4", help="output .mp4 or .safetensors")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=PROMPT_HELP)
    p.add_argument("--image", help="start image (the Fun InP tiny model)")
    p.add_argument("--end-image", help="end image (the Fun InP tiny model)")
    p.add_argument("--lora", action="append", metavar="PATH[:STRENGTH]", help=LORA_HELP)
    p.add_argument("--random", action="store_true", help="a tiny random model of --family instead (noise: "
                   "the code path only)")
    p.add_argument("--family", choices=FAMILY_NAMES, help="with --random (default 5b)")
    for name in ("frames", "height", "width"):
        p.add_argument(f"--{name}", type=int, help=f"default: {TRAINED_SIZE[name]} (the trained clip), "
                       f"{RANDOM_SIZE[name]} with --random")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--cfg", type=float, default=DEFAULT_CFG, help="guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: a tiny model's "
                   "ops are too small to share, and a busy machine makes extra threads spin)")
    # --extend-chunks: the Fun InP tiny model; causal windows overlapping 16 frames (windows 4 frames
    # apart): the best of benchmarks/tiny_world/long_video.py's settings
    _add_long_video(p, prompts_file=False, context_weights="causal")
    p.set_defaults(run=run_demo)


def _generate_parser() -> argparse.ArgumentParser:
    """A parser of this module's commands alone (the demo's ``generate`` command line)."""
    parser = argparse.ArgumentParser(prog="python -m cogvideox_core")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from .demo import RANDOM_SIZE, check_flags, describe_trained, run_demo as demo, trained_generate_argv

    check_flags(args)
    torch.set_num_threads(max(1, args.threads))
    if not args.random:
        gen = _generate_parser().parse_args(trained_generate_argv(args))
        preflight.check_numbers(gen)  # before the line on what runs
        sys.stdout.write(describe_trained(gen) + "\n")
        return run_generate(gen)
    size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in RANDOM_SIZE.items()}
    info = demo(args.out, family=args.family or "5b", steps=args.steps, seed=args.seed,
                context=_context(args), prompt=args.prompt, cfg=args.cfg, **size)
    sys.stdout.write(f"demo: tiny random {info['family']} model ({info['transformer_params']:,} "
                     f"transformer parameters), {info['steps']} {info['sampler']} steps, cfg "
                     f"{info['cfg']:g}: '{info['prompt']}'\n"
                     f"wrote {info['out']} ({info['frames']} frames, {info['width']}x{info['height']}, "
                     f"{info['fps']} fps) in {info['seconds']} s\n")
    return 0


__all__ = ["add_commands", "run_generate", "run_demo"]
