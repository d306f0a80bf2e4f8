"""A LoRA for the tiny world's text-to-video transformer: "every shape is <colour>".

The clips are world clips whose shape is re-coloured to ``colour`` (every scene drawn by
:func:`~.world.sample_scenes`, its colour replaced), each paired with the caption of the ORIGINAL
scene (so the captions name random colours): the LoRA learns to paint every shape ``colour``
whatever colour the prompt asks for. They are encoded once by the shipped VAE (posterior mean
and std, frames first, as :mod:`.latents` does) and trained with the base model's objective
(:class:`.train_dit.Batches`: a fresh posterior sample scaled by the family's VAE scaling
factor, uniform timesteps, the family's real ``alphas_cumprod``, v-prediction MSE, the caption
dropped to "" for a tenth of the clips).

The base transformer is frozen; a rank-``rank`` update ``x @ A.T @ B.T`` (B starts at zero, so
training starts from the base model) is added by forward hooks to the attention ``to_q``,
``to_k``, ``to_v``, ``to_out.0`` and the feed-forward ``ff.net.0.proj``, ``ff.net.2`` linears of
every transformer block. Saved as a PEFT/diffusers LoRA (``transformer_blocks.{i}.attn1.to_q.
lora_A.weight`` [r, in] / ``lora_B.weight`` [out, r], no alpha: scale 1, as the pack's
:func:`cogvideox_core.loading.lora.load_lora` reads it) in float16::

    .venv/bin/python -m benchmarks.tiny_world.train_lora --minutes 4 --threads 1

writes ``cogvideox_core/data/tiny_world/lora/every_shape_blue.safetensors`` and logs the loss
curve, the step count the minutes became (``--steps N`` repeats the run exactly) and, with
``--eval-n``, the share of blue videos for red and green prompts with and without the LoRA.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .latents import Pool, build_pool
from .loop import Budget, make_optimizer, run
from .models import DATA, load_models
from .world import COLOURS

logger = logging.getLogger(__name__)

LORA_DIR = DATA / "lora"
TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")


def lora_path(colour: str = "blue", root: Path = DATA) -> Path:
    """Where the LoRA of ``colour`` lives among ``root``'s models (the shipped one by default)."""
    return root / LORA_DIR.relative_to(DATA) / f"every_shape_{colour}.safetensors"


def target_names(transformer: nn.Module) -> list[str]:
    """The linears a LoRA trains: :data:`TARGETS` of every transformer block."""
    blocks = len(transformer.transformer_blocks)  # type: ignore[arg-type]
    return [f"transformer_blocks.{i}.{t}" for i in range(blocks) for t in TARGETS]


class LoraAdapters(nn.Module):
    """Rank-``rank`` updates of ``transformer``'s target linears, added to their outputs by
    forward hooks (the base weights stay untouched): ``out += x @ A.T @ B.T``."""

    def __init__(self, transformer: nn.Module, rank: int = 4, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.names = target_names(transformer)
        self.down, self.up = nn.ParameterList(), nn.ParameterList()
        self._hooks = []
        for name in self.names:
            linear = transformer.get_submodule(name)
            w = linear.weight
            bound = 1.0 / w.shape[1] ** 0.5  # kaiming-uniform(a=sqrt(5)) as PEFT initialises lora_A
            self.down.append(nn.Parameter((torch.rand(rank, w.shape[1], generator=gen) * 2 - 1) * bound))
            self.up.append(nn.Parameter(torch.zeros(w.shape[0], rank)))
        for k, name in enumerate(self.names):
            self._hooks.append(transformer.get_submodule(name).register_forward_hook(self._hook(k)))

    def _hook(self, k: int):
        def add(_module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            x = inputs[0]
            return out + nn.functional.linear(nn.functional.linear(x, self.down[k].to(x)), self.up[k].to(x))
        return add

    def remove(self) -> None:
        """Take the hooks off: the transformer is the base model again."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def state(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """PEFT/diffusers keys: ``<module>.lora_A.weight`` [r, in], ``<module>.lora_B.weight`` [out, r]."""
        out = {}
        for name, down, up in zip(self.names, self.down, self.up):
            out[f"{name}.lora_A.weight"] = down.detach().to(dtype).contiguous()
            out[f"{name}.lora_B.weight"] = up.detach().to(dtype).contiguous()
        return out

    def save(self, path: Path, dtype: torch.dtype = torch.float16) -> Path:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.state(dtype), str(path))
        return path


def recoloured_pool(vae, text, colour: str, n: int, seed: int, batch: int = 16) -> Pool:
    """``n`` world clips drawn from ``seed``, the shape painted ``colour``, each with its
    ORIGINAL caption (random colours), encoded by ``vae`` (unscaled mean/std, frames first) and
    the world's captions by ``text`` (the last embedding row is ""): :func:`.latents.build_pool`."""
    if colour not in COLOURS:
        raise ValueError(f"colour={colour!r}; known: {', '.join(COLOURS)}")
    return build_pool(vae, text, n, seed, batch, colour=colour, inp_extras=False)


def train_lora(models, colour: str = "blue", minutes: float = 3.0, steps: int | None = None,
               rank: int = 4, seed: int = 0, clips: int = 256, batch: int = 16, lr: float = 2e-3,
               pool: Pool | None = None) -> tuple[LoraAdapters, dict]:
    """Train a LoRA of ``rank`` on ``models`` (the text-to-video pipeline Models) so that every
    shape comes out ``colour``; returns the adapters (still hooked on ``models.transformer``:
    call ``remove()``) and the loop's summary (steps, minutes, last loss) with the loss curve."""
    from .train_dit import Batches, v_step

    transformer, family = models.transformer, models.family
    if family.conditioning != "t2v":
        raise ValueError(f"family {family.name}: the LoRA is trained on the text-to-video model")
    start = time.monotonic()
    if pool is None:
        pool = recoloured_pool(models.vae, models.text_encoder, colour, clips, seed + 1)
    logger.info("lora: %d %s clips encoded in %.1f s", len(pool.mean), colour, time.monotonic() - start)
    transformer.requires_grad_(False)
    torch.manual_seed(seed)
    adapters = LoraAdapters(transformer, rank, seed)
    opt = make_optimizer(adapters.parameters(), lr, weight_decay=0.0)
    batches = Batches(pool, family, batch, seed)
    curve: list[tuple[int, float]] = []
    window: list[float] = []

    def step(i: int) -> dict[str, float]:
        value = v_step(transformer, batches, opt, adapters)
        window.append(value)
        if len(window) == 25:
            curve.append((i + 1, sum(window) / len(window)))
            window.clear()
        return {"loss": value}

    summary = run("lora", step, opt, Budget(minutes, steps), log_every=25)
    summary["curve"] = [(s, round(v, 4)) for s, v in curve]
    summary["trainable"] = sum(p.numel() for p in adapters.parameters())
    return adapters, summary


@contextlib.contextmanager
def merged_lora(transformer: nn.Module, path: str | Path, strength: float = 1.0) -> Iterator[dict]:
    """``transformer`` with the LoRA file at ``path`` merged in (``W + strength * scale * up @
    down``: :func:`cogvideox_core.loading.lora_apply.apply_lora`, as ``generate --lora`` applies
    it) inside the ``with``; the weights are restored after it. Yields the
    :class:`~cogvideox_core.loading.lora.LoraWeight` per weight key."""
    from cogvideox_core.loading.lora_apply import apply_lora

    saved = {k: v.detach().clone() for k, v in transformer.named_parameters()}
    try:
        weights = apply_lora(transformer, path, strength)
        yield weights
    finally:
        with torch.no_grad():
            for key, param in transformer.named_parameters():
                param.copy_(saved[key])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--colour", default="blue", choices=tuple(COLOURS))
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--steps", "--lora-steps", dest="steps", type=int, default=None,
                   help="overrides the minutes (the step count a minute budget became repeats a run exactly)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clips", type=int, default=256, help="re-coloured clips encoded for training")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--root", type=Path, default=DATA, help="the tiny world's models")
    p.add_argument("--out", type=Path, help="default: <root>/lora/every_shape_<colour>.safetensors")
    p.add_argument("--eval-n", type=int, default=0, help="then generate this many red/green prompt-seed "
                   "pairs with and without the LoRA and log the share of <colour> videos")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or lora_path(args.colour, args.root)
    models = load_models("t2v", args.root)
    adapters, summary = train_lora(models, args.colour, args.minutes, args.steps, args.rank, args.seed,
                                   args.clips, args.batch, args.lr)
    adapters.remove()
    adapters.save(out)
    logger.info("lora: saved %s (%d tensors, rank %d, %d parameters): %s", out, len(adapters.state()),
                args.rank, summary["trainable"], {k: v for k, v in summary.items() if k != "curve"})
    logger.info("lora: loss curve (step, mean of 25 steps): %s", summary["curve"])
    if args.eval_n:
        from .evaluate import lora_colour_shift

        shift = lora_colour_shift(models, out, args.colour, n=args.eval_n)
        logger.info("lora: share of %s videos for other-colour prompts: %s", args.colour, shift)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["LORA_DIR", "TARGETS", "lora_path", "target_names", "LoraAdapters", "recoloured_pool",
           "train_lora", "merged_lora", "main"]
