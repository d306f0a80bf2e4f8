"""``python -m cogvideox_core convert SRC DEST``: rewrite CogVideoX weights in another format.

From any file or folder the pack loads (diffusers folders, single safetensors files in the
diffusers, ComfyUI or SAT layouts, SAT ``.pt`` checkpoints, GGUF files and ComfyUI scaled fp8
files, dequantized): a diffusers folder (``--to diffusers``, the default: ``DEST/transformer/``
and/or ``DEST/vae/``) or one ComfyUI-layout transformer file (``--to comfyui``). The result line goes to stdout, as ``generate``'s does.
"""
from __future__ import annotations

import argparse
import sys


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    from ..families import FAMILY_NAMES
    from ..loading.convert import DTYPES, TARGETS

    p = sub.add_parser("convert", help="write a model as a diffusers folder or a ComfyUI file",
                       description="Convert the transformer and/or VAE at SRC (any file or folder the "
                                   "pack loads, SAT .pt checkpoints included) tensor by tensor; the T5 "
                                   "text encoder is not converted.")
    p.add_argument("src", metavar="SRC", help="model root, component folder or weight file")
    p.add_argument("dest", metavar="DEST", help="the new diffusers folder, or with --to comfyui the "
                                                "new .safetensors file")
    p.add_argument("--to", choices=TARGETS, default="diffusers",
                   help="diffusers: DEST/transformer and DEST/vae with config.json and sharded "
                        "safetensors; comfyui: one transformer file in ComfyUI's key layout")
    p.add_argument("--dtype", choices=list(DTYPES), default="keep",
                   help="keep: every tensor as stored (bit for bit), quantized ones (GGUF, scaled fp8) "
                        "dequantized as bf16; else the floating tensors in this dtype (fp32: the "
                        "dequantized values exactly)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DEST (never an input)")
    p.add_argument("--shard-size", type=float, default=5.0, metavar="GB",
                   help="diffusers shards of at most this many GB (default 5, as diffusers writes)")
    p.add_argument("--family", choices=FAMILY_NAMES, default=None,
                   help="only where the weights cannot tell (checked against them)")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from ..loading.convert import convert

    if not args.shard_size > 0:
        raise ValueError(f"--shard-size {args.shard_size}: must be a positive number of GB")
    result = convert(args.src, args.dest, to=args.to, dtype=args.dtype, overwrite=args.overwrite,
                     family=args.family, max_shard_bytes=int(args.shard_size * 10**9))
    sys.stdout.write(result.summary() + "\n")
    return 0


__all__ = ["add_commands"]
