"""CPU time of the tiny world's VAE at batch 1: our convs through oneDNN against ATen's choice
and against diffusers.

ATen runs a float32 batch-1 conv3d whose N*C*T*H is at most 20480 through its native column
buffer (``slow_conv3d``): every conv of a tiny VAE (8-16 channels) and the real VAE's 512-channel
convs of small tiles. ``cogvideox_core.vae.blocks.conv3d_bounded`` calls oneDNN directly there.
This times, on the shipped tiny world VAE (``cogvideox_core/data/tiny_world/vae``, float32, the
demo's clip: 17 frames of 64x96), one encode and one decode each way:

  (a) ours      the core's VAE as shipped (oneDNN for those convs)
  (b) ATen      the same with the direct call off (ATen's own choice: the column buffer)
  (c) diffusers ``AutoencoderKLCogVideoX`` with the same weights

Each is the best of ``--repeat`` runs (the machine may be shared: compare ratios). The last line
is ``RESULT decode_ours_over_aten=<x> decode_ours_over_diffusers=<y> encode_ours_over_aten=<z>
maxdiff=<d>``; d: the largest abs difference of (a)'s decode to (b)'s and (c)'s.

    .venv/bin/python benchmarks/cpu_conv.py --threads 2
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogvideox_core.loading.weights import load_vae  # noqa: E402
from cogvideox_core.vae import blocks  # noqa: E402

logger = logging.getLogger("cpu_conv")
VAE = ROOT / "cogvideox_core" / "data" / "tiny_world" / "vae"


def best_of(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, torch.Tensor]:
    """(the fastest of ``repeat`` timed calls after one warm-up, the last output)."""
    out = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def diffusers_vae(ours: torch.nn.Module) -> torch.nn.Module:
    from diffusers import AutoencoderKLCogVideoX

    model = AutoencoderKLCogVideoX(**ours.config.to_diffusers())  # type: ignore[union-attr]
    model.load_state_dict(ours.state_dict(), strict=True)
    return model.eval()


def measure(repeat: int = 3) -> dict[str, float]:
    """Seconds of each encode and decode (keys ``decode_ours``, ``encode_aten``, ...), the ratios
    of the RESULT line, and ``maxdiff``."""
    vae = load_vae(VAE, torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 17, 64, 96, generator=gen) * 2 - 1
    z = torch.randn(1, 16, 5, 8, 12, generator=gen)
    ref = diffusers_vae(vae)
    direct = blocks._onednn_direct
    out: dict[str, float] = {}
    decoded: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, on in (("ours", True), ("aten", False)):
            blocks._onednn_direct = direct if on else (lambda conv, x: False)  # type: ignore[assignment]
            try:
                out[f"decode_{name}"], decoded[name] = best_of(lambda: vae.decode(z), repeat)
                out[f"encode_{name}"], _ = best_of(lambda: vae.encode(video).mean, repeat)
            finally:
                blocks._onednn_direct = direct  # type: ignore[assignment]
        out["decode_diffusers"], decoded["diffusers"] = best_of(lambda: ref.decode(z).sample, repeat)
        out["encode_diffusers"], _ = best_of(lambda: ref.encode(video).latent_dist.mean, repeat)
    out["decode_ours_over_aten"] = out["decode_ours"] / out["decode_aten"]
    out["decode_ours_over_diffusers"] = out["decode_ours"] / out["decode_diffusers"]
    out["encode_ours_over_aten"] = out["encode_ours"] / out["encode_aten"]
    out["maxdiff"] = max(float((decoded["ours"] - decoded[k]).abs().max()) for k in ("aten", "diffusers"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    out = measure(args.repeat)
    for key in ("decode_ours", "decode_aten", "decode_diffusers", "encode_ours", "encode_aten", "encode_diffusers"):
        logger.info("%-18s %.3f s", key, out[key])
    print("RESULT " + " ".join(f"{k}={out[k]:.3f}" for k in
                               ("decode_ours_over_aten", "decode_ours_over_diffusers", "encode_ours_over_aten"))
          + f" maxdiff={out['maxdiff']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
