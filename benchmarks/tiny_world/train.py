"""Train the tiny world's CogVideoX models and ship them in ``cogvideox_core/data/tiny_world``.

    .venv/bin/python -m benchmarks.tiny_world.train --threads 2 \\
        --vae-minutes 12 --t2v-minutes 20 --inp-minutes 18

Stages (``--stages``, each reads what the earlier ones wrote, so a run can be resumed from
any stage): ``text`` (the frozen tiny T5, saved), ``vae`` (trained, saved), ``pool`` (world clips
encoded by the saved VAE, prompts by the saved T5, cached in ``--work``), ``t2v`` and ``inp``
(the transformers, saved), ``eval`` (loads everything through the pack's loaders, generates
and analyses). Everything is seeded from ``--seed``; a minute budget is logged as the step
count it became, which ``--<stage>-steps`` repeats exactly.
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import logging
import time
from pathlib import Path

import torch

from .loop import Budget
from .models import DATA, Size, build_t5, family, file_sizes, load_models, save_t5, save_transformer, save_vae, vae_config

logger = logging.getLogger("tiny_world")

STAGES = ("text", "vae", "pool", "t2v", "inp", "eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=DATA, help="where the model files go")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tiny_world_work", help="pool cache, eval results")
    for stage, minutes in (("vae", 12.0), ("t2v", 20.0), ("inp", 18.0)):
        p.add_argument(f"--{stage}-minutes", type=float, default=minutes)
        p.add_argument(f"--{stage}-steps", type=int, default=None, help="overrides the minutes")
    p.add_argument("--vae-init", type=Path, help="continue training from this VAE folder")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="t2v/inp: continue from the transformer saved in --out (seed + --round)")
    p.add_argument("--inp-from-t2v", action="store_true",
                   help="inp: start from the text-to-video transformer saved in --out (its weights, "
                   "the extra input channels zero) instead of a random initialisation")
    p.add_argument("--round", type=int, default=0, help="added to a continued transformer stage's seed")
    p.add_argument("--vae-round", type=int, default=0, help="added to the VAE stage's seed (a continued run)")
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--shape-weight", type=float, default=10.0, help="VAE loss weight of the shape's pixels")
    p.add_argument("--wrap", type=float, default=0.0, help="share of the VAE's and the pool's clips "
                   "anywhere on the torus, crossing an edge (long videos)")
    p.add_argument("--pool", type=int, default=4096, help="clips encoded for the transformers")
    p.add_argument("--inp-known", help="InP shares of none,start,start_end known, e.g. 1,1,2 (default: a third each)")
    p.add_argument("--batch", type=int, default=16, help="transformer batch")
    p.add_argument("--layers", type=int, default=Size.layers)
    p.add_argument("--heads", type=int, default=Size.heads)
    p.add_argument("--head-dim", type=int, default=Size.head_dim)
    p.add_argument("--text-len", type=int, default=Size.text_len, help="T5 states the transformers read "
                   "(max_text_seq_length; the first of the 226 encoded)")
    p.add_argument("--lr", type=float, default=1e-3, help="transformer peak learning rate")
    p.add_argument("--vae-eval-n", type=int, default=48, help="clips of the VAE's reconstruction rates")
    p.add_argument("--eval-n", type=int, default=20)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-cfg", default="6", help="comma-separated guidance scales to evaluate")
    args = p.parse_args(argv)
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        p.error(f"--stages {args.stages}: unknown {', '.join(sorted(unknown))}; known: {', '.join(STAGES)}")
    return args


def stage_text(args: argparse.Namespace) -> dict:
    save_t5(build_t5(), args.out)
    return {}


def stage_vae(args: argparse.Namespace) -> dict:
    from .evaluate import vae_prototypes, vae_rates
    from .train_vae import train_vae

    init = None if args.vae_init is None else _vae(args, args.vae_init)
    vae, summary = train_vae(vae_config(), Budget(args.vae_minutes, args.vae_steps), args.seed + args.vae_round,
                             lr=args.vae_lr, init=init, shape_weight=args.shape_weight,
                             wrap=args.wrap)
    save_vae(vae, args.out)
    proto = vae_prototypes(vae)  # once for both rates
    summary["recon"] = vae_rates(vae, args.vae_eval_n, prototypes=proto)
    logger.info("vae reconstruction: %s", summary["recon"])
    if args.wrap > 0:
        summary["recon_wrapped"] = vae_rates(vae, args.vae_eval_n, wrap=1.0, prototypes=proto)
        logger.info("vae reconstruction, clips anywhere on the torus: %s", summary["recon_wrapped"])
    return summary


def _text_encoder(args: argparse.Namespace):
    from cogvideox_core.loading.text import load_text_encoder

    return load_text_encoder(args.out / "text_encoder", torch.float32)


def _vae(args: argparse.Namespace, path: Path | None = None):
    from cogvideox_core.loading.weights import load_vae

    return load_vae(path or args.out / "vae", torch.float32)


def stage_pool(args: argparse.Namespace) -> dict:
    from .latents import build_pool, check_inp_extra

    start = time.monotonic()
    vae = _vae(args)
    diff = check_inp_extra(vae, family("inp"), args.seed)
    logger.info("InP channels equal build_conditioning's (max diff %.2e)", diff)
    pool = build_pool(vae, _text_encoder(args), args.pool, args.seed + 1, wrap=args.wrap)
    pool.save(args.work / "pool.pt")
    stats = {"clips": args.pool, "minutes": round((time.monotonic() - start) / 60, 2),
             "z_rms": round(float(pool.mean.pow(2).mean().sqrt()), 4),
             "z_std_mean": round(float(pool.std.mean()), 4), **caption_separation(pool)}
    logger.info("pool: %s", stats)
    return stats


def caption_separation(pool) -> dict:
    """How far apart the frozen T5 keeps captions that differ in one word: per pair, the
    cosine distance of the token states at the differing word (the largest over the first 16
    tokens), and of all 226 states together; the smallest and the mean over pairs."""
    word, whole = [], []
    words = [c.split() for c in pool.captions]
    for i, j in itertools.combinations(range(len(words)), 2):
        if sum(a != b for a, b in zip(words[i], words[j])) == 1:
            a, b = pool.embeds[i], pool.embeds[j]
            per_token = 1 - torch.nn.functional.cosine_similarity(a[:16], b[:16], dim=-1)  # [16]
            word.append(float(per_token.max()))
            whole.append(1.0 - float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)))
    return {"one_word_token_cos_dist_min": round(min(word), 4),
            "one_word_token_cos_dist_mean": round(sum(word) / len(word), 4),
            "one_word_all_226_cos_dist_min": round(min(whole), 5)}


def stage_transformer(args: argparse.Namespace, kind: str) -> dict:
    from .latents import Pool
    from .train_dit import inp_from_t2v, train_transformer

    fam = family(kind, Size(args.heads, args.head_dim, args.layers, text_len=args.text_len))
    budget = Budget(getattr(args, f"{kind}_minutes"), getattr(args, f"{kind}_steps"))
    pool = Pool.load(args.work / "pool.pt")
    seed = args.seed + (10 if kind == "t2v" else 20) + 100 * args.round
    root = args.out if kind == "t2v" else args.out / kind
    init = load_models(kind, args.out).transformer if args.resume else None
    if kind == "inp" and args.inp_from_t2v and not args.resume:
        init = inp_from_t2v(load_models("t2v", args.out).transformer, fam)
        logger.info("inp: starting from the text-to-video transformer in %s", args.out)
    model, summary = train_transformer(fam, pool, budget, seed, args.batch, args.lr,
                                       save=lambda m: save_transformer(m, fam, root), init=init,
                                       known_weights=_known(args.inp_known) if kind == "inp" else None)
    save_transformer(model, fam, root)
    summary["params"] = sum(p.numel() for p in model.parameters())
    return summary


def _known(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(w) for w in text.split(","))


def stage_eval(args: argparse.Namespace) -> dict:
    from .evaluate import inp_rates, t2v_rates, vae_prototypes

    out: dict[str, object] = {}
    proto = vae_prototypes(_vae(args))
    out["prototypes"] = {"means": proto.means, "std": proto.std}
    logger.info("shape prototypes of the VAE's rendering: %s", out["prototypes"])
    n, steps = args.eval_n, args.eval_steps
    for cfg in (float(c) for c in args.eval_cfg.split(",")):
        start = time.monotonic()
        if (args.out / "transformer").is_dir():
            out[f"t2v_cfg{cfg:g}"] = t2v_rates(load_models("t2v", args.out), n, steps, cfg, prototypes=proto)
        if (args.out / "inp" / "transformer").is_dir():
            inp = load_models("inp", args.out)
            out[f"inp_start_end_cfg{cfg:g}"] = inp_rates(inp, n, steps, cfg, prototypes=proto)
            out[f"inp_start_cfg{cfg:g}"] = inp_rates(inp, n, steps, cfg, end=False, prototypes=proto)
        logger.info("eval cfg %g (%.1f min): %s", cfg, (time.monotonic() - start) / 60,
                    {k: v for k, v in out.items() if k.endswith(f"cfg{cfg:g}")})
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    logger.info("tiny world training: %s", vars(args))
    runs = {"text": stage_text, "vae": stage_vae, "pool": stage_pool, "eval": stage_eval,
            "t2v": lambda a: stage_transformer(a, "t2v"), "inp": lambda a: stage_transformer(a, "inp")}
    summary: dict[str, object] = {}
    for stage in args.stages.split(","):
        start = time.monotonic()
        summary[stage] = runs[stage](args)
        logger.info("stage %s: %.1f min: %s", stage, (time.monotonic() - start) / 60, summary[stage])
        (args.work / f"summary_{stage}.json").write_text(json.dumps(summary[stage], indent=2, default=str))
    sizes = file_sizes(args.out)
    logger.info("files (%d bytes in all): %s", sum(sizes.values()), sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
