"""The ``demo`` command's work: the tiny models trained on a synthetic world of moving shapes and
shipped in ``cogvideox_core/data/tiny_world`` (a 2B-architecture text-to-video model, a Fun-2B InP
model for start/end images, their VAE and T5; trained by ``benchmarks/tiny_world/train.py``) run
through ``generate``, every flag of it; or, with ``--random``, a tiny random model of any family
(:mod:`cogvideox_core.tiny`) through the whole chain. The constants load with the CLI's parser;
the models and the pipeline only inside the commands."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

TRAINED = Path(__file__).resolve().parents[1] / "data" / "tiny_world"
# What the trained models' world has (benchmarks/tiny_world/world.py, which the core never imports;
# tests/test_demo.py checks the two agree).
WORLD: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue"), "shape": ("circle", "square"),
    "direction": ("left", "right", "up", "down"), "background": ("white",)}
DEFAULT_PROMPT = "a red circle moving right on a white background"
TRAINED_SIZE = {"frames": 17, "height": 64, "width": 96}  # the clips it was trained on
DEFAULT_STEPS = 20
DEFAULT_CFG = 6.0
RANDOM_SIZE = {"frames": 25, "height": 96, "width": 160}  # --random's default
INP_FLAGS = ("image", "end_image")  # given: the Fun InP model
SHIPPED_LORAS = {"every_shape_blue": TRAINED / "lora" / "every_shape_blue.safetensors"}  # --lora NAME
LORA_HELP = ("PATH[:STRENGTH]: a LoRA merged into the tiny transformer (default strength 1), or the "
             f"name of the one shipped with it: {', '.join(SHIPPED_LORAS)} (paints every shape blue, "
             "whatever colour the prompt asks for); repeat for several")


def _one_of(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else f"<{'|'.join(words)}>"


PROMPT_HELP = (f"default: '{DEFAULT_PROMPT}'; the tiny models learned 'a {_one_of(WORLD['colour'])} "
               f"{_one_of(WORLD['shape'])} moving {_one_of(WORLD['direction'])} on a "
               f"{_one_of(WORLD['background'])} background' (other prompts run, meaning little to them)")


def run_demo(out: str | Path = "cogvideox_demo.mp4", family: str = "5b", frames: int = 25,
             height: int = 96, width: int = 160, steps: int = 20, seed: int = 0,
             show_progress: bool = True, context: object | None = None,
             prompt: str = DEFAULT_PROMPT, cfg: float = DEFAULT_CFG) -> dict[str, object]:
    """Build a tiny random ``family`` model in memory and run the whole chain: ``prompt``,
    sampling at guidance ``cfg``, decode, mp4 (or ``.safetensors``); ``context``: a
    :class:`~cogvideox_core.sampling.windows.ContextOptions` for long videos. Returns what it did."""
    from ..families import get_family
    from ..generation.pipeline import GenerateRequest, generate
    from ..runtime import TorchRuntime
    from ..tiny import demo_inputs, random_models
    from ..video_io import write_frames

    start = time.monotonic()
    small = get_family(family).fixed_size is not None  # 5B-I2V: a 64x96 table, not 480x720
    models = random_models(family, seed=seed, small_grid=small)
    fam = models.family
    if fam.fixed_size is not None:  # 5B-I2V: the table's size only
        height, width = fam.fixed_size
    request = GenerateRequest(prompt=prompt, inputs=demo_inputs(fam, frames, height, width), frames=frames,
                              height=height, width=width, steps=steps, cfg=cfg, seed=seed,
                              context=context)  # type: ignore[arg-type]
    video = generate(models, request, TorchRuntime(device="cpu", show_progress=show_progress))
    path = write_frames(video, Path(out), fam.fps)
    params = sum(p.numel() for p in models.transformer.parameters())
    return {"family": fam.name, "transformer_params": params, "frames": video.shape[0],
            "height": video.shape[1], "width": video.shape[2], "steps": steps,
            "sampler": fam.recommended_sampler, "cfg": cfg, "prompt": prompt, "fps": fam.fps, "out": str(path),
            "seconds": round(time.monotonic() - start, 2)}


def check_flags(args: argparse.Namespace) -> None:
    """The demo's own refusals, one ``ValueError`` line naming the flag, before anything loads
    (``generate`` judges the rest, also before loading)."""
    from .preflight import check_suffix, flag

    check_suffix(args.out)
    given = [name for name in INP_FLAGS if getattr(args, name) is not None]
    if args.random:
        if args.extend_chunks > 1:
            given.append("extend_chunks")
        if args.lora:
            given.append("lora")
        if given:
            value = getattr(args, given[0])
            value = " ".join(value) if isinstance(value, list) else value  # --lora: repeatable
            raise ValueError(f"{flag(given[0])} {value} with --random: the random models take no images, "
                             "no chain and no LoRA; drop --random (the trained Fun InP model takes "
                             "--image, --end-image and --extend-chunks, the trained models --lora)")
        return
    if args.family is not None:
        raise ValueError(f"--family {args.family}: only with --random (the trained models are one 2B "
                         "text-to-video and one Fun-2B InP model)")
    for name in given:
        path = Path(getattr(args, name)).expanduser()
        if not path.is_file():
            raise ValueError(f"{flag(name)} {getattr(args, name)}: "
                             f"{'is a folder' if path.is_dir() else 'no such file'}; give an image file")


def trained_model(args: argparse.Namespace) -> Path:
    """The shipped model root the demo runs: the Fun InP one for images or a chain, else the
    text-to-video one."""
    inp = any(getattr(args, name) is not None for name in INP_FLAGS) or args.extend_chunks > 1
    model = TRAINED / "inp" if inp else TRAINED
    if not (model / "transformer" / "config.json").is_file():
        raise ValueError(f"the trained tiny models are not in {TRAINED} (a partial checkout?): "
                         "use --random, or train them with benchmarks/tiny_world/train.py")
    return model


def trained_generate_argv(args: argparse.Namespace) -> list[str]:
    """``generate``'s command line for the shipped tiny models: :func:`trained_model`, the shared
    VAE and T5, the trained clip's size unless given, the demo's flags passed on."""
    size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in TRAINED_SIZE.items()}
    argv = ["generate", "--model", str(trained_model(args)), "--vae", str(TRAINED / "vae"),
            "--text-encoder", str(TRAINED / "text_encoder"), f"--prompt={args.prompt}",
            *(f"--{k}={v}" for k, v in size.items()), f"--steps={args.steps}", f"--cfg={args.cfg}",
            f"--seed={args.seed}", "--device=cpu", "--dtype=float32", f"--out={args.out}",
            f"--extend-chunks={args.extend_chunks}", f"--extend-overlap={args.extend_overlap}",
            f"--colour-match={args.colour_match}"]
    for name in INP_FLAGS:
        if getattr(args, name) is not None:
            argv.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    argv += [f"--lora={shipped_lora(spec)}" for spec in args.lora or ()]
    if args.context_frames is not None:
        argv += [f"--context-frames={args.context_frames}", f"--context-overlap={args.context_overlap}",
                 f"--context-schedule={args.context_schedule}", f"--context-weights={args.context_weights}",
                 f"--context-batch={args.context_batch}"]
    return argv


def shipped_lora(spec: str) -> str:
    """``--lora``'s value with a shipped LoRA's name (:data:`SHIPPED_LORAS`, before any
    ``:STRENGTH``) replaced by its file; anything else unchanged (a path)."""
    name, sep, strength = spec.partition(":")
    if name in SHIPPED_LORAS and not Path(name).exists():
        return f"{SHIPPED_LORAS[name]}{sep}{strength}"
    return spec


def describe_trained(gen: argparse.Namespace) -> str:
    """The demo's line on the model ``generate`` will run (headers only)."""
    from ..loading.weights import inspect_path
    from .preflight import check_loras

    info = inspect_path(gen.model)
    params = sum(math.prod(e.shape) for e in info.components["transformer"].index.values())
    kind = "start/end-frame (Fun InP)" if Path(gen.model) != TRAINED else "text-to-video"
    where = Path(gen.model).relative_to(TRAINED.parents[2])
    loras = "".join(f", LoRA {Path(p).name} at {s:g}" for p, s in check_loras(gen))
    return (f"demo: tiny {info.family} {kind} model trained on moving shapes ({params:,} transformer "
            f"parameters, {where}){loras}, {gen.steps} steps, cfg {gen.cfg:g}: '{gen.prompt}'")


__all__ = ["run_demo", "check_flags", "trained_model", "trained_generate_argv", "shipped_lora", "describe_trained",
           "TRAINED", "WORLD", "DEFAULT_PROMPT", "PROMPT_HELP", "TRAINED_SIZE", "RANDOM_SIZE",
           "DEFAULT_STEPS", "DEFAULT_CFG", "SHIPPED_LORAS", "LORA_HELP"]
