"""Peak memory and time of VAE decode: our tiled decode against untiled and diffusers' decodes.

The full-size CogVideoX VAE architecture (215.6M parameters, fp32, random weights from seed 0)
on the CPU decodes random latents of 128x192 pixels (16x24 latents) for 4, 8, 16 and 32 latent
frames in four ways, each in its own process:

  (a) tiled     ``cogvideox_core.vae.tiling.tiled_decode``, exact mode, ``--tile`` (default 64x96)
  (b) untiled   ``CogVideoXVAE.decode`` (the reference chunking, no tiling)
  (c) diffusers ``AutoencoderKLCogVideoX.decode``
  (d) diff-tile diffusers after ``enable_tiling(tile_sample_min_height/width=--tile)``

Memory is the peak resident set *above the baseline after the model is loaded* (the ~860 MB of
weights are identical for all variants and left out): the worker resets the kernel's high-water
mark (``/proc/self/clear_refs``) once weights and latents are in place, then reads ``VmHWM``
after the decode. On a CPU the compute device is the host, so everything the decode holds
counts: activations, the causal cache, the output. Times are wall-clock seconds of the decode
call alone, one run each (the machine may be shared: compare ratios, not seconds).

The last line is ``RESULT peak_32_over_4=<x> tiled_peak_over_diffusers=<y>
tiled_time_over_diffusers=<z> exact_maxdiff=<d>``: x = (a)'s peak at the most over the fewest
frames; y = the largest (a)/(c) peak ratio over the frame counts; z = (a)'s total time over (c)'s;
d = the max abs difference of (a) to (b) and to (c) over all frame counts. Targets: x <= 1.15,
y <= 0.5, z <= 1.3, d <= 1e-3.

    .venv/bin/python benchmarks/vae_decode.py            # the full table (about 50 min on 2 idle cores)
    .venv/bin/python benchmarks/vae_decode.py --quick    # 24x32, 1 and 2 latents, 16x16 tiles: ~30 s
    .venv/bin/python benchmarks/vae_decode.py --fast-error --frames 4   # also (e) exact=False
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = [("tiled", "untiled"), ("tiled", "diffusers"), ("untiled", "diffusers"), ("diffusers_tiled", "diffusers")]
LETTER = {"tiled": "a", "untiled": "b", "diffusers": "c", "diffusers_tiled": "d", "fast": "e"}
VARIANTS = {"tiled": "(a) tiled", "untiled": "(b) untiled", "diffusers": "(c) diffusers",
            "diffusers_tiled": "(d) diff-tile", "fast": "(e) fast"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16, 32], help="latent frame counts")
    p.add_argument("--tile", type=int, nargs=2, default=[64, 96], metavar=("H", "W"), help="tile, pixels")
    p.add_argument("--quick", action="store_true",
                   help="24x32 pixels, 1 and 2 latent frames, 16x16 tiles, without (d)")
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), help="a subset to run (default: a-d)")
    p.add_argument("--fast-error", action="store_true",
                   help="also run (e): exact=False with --overlap, and report its difference")
    p.add_argument("--overlap", type=int, default=16, help="overlap of (e), pixels")
    p.add_argument("--worker", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.height, args.width, args.frames, args.tile = 24, 32, [1, 2], [16, 16]
        args.variants = args.variants or ["tiled", "untiled", "diffusers"]
    args.variants = args.variants or ["tiled", "untiled", "diffusers", "diffusers_tiled"]
    if args.fast_error and "fast" not in args.variants:
        args.variants.append("fast")
    return args


# ---- worker: one decode in a fresh process -----------------------------------------------------

def _status(key: str) -> int:
    """A ``/proc/self/status`` entry in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _load_model(variant: str, weights: str) -> torch.nn.Module:
    state = torch.load(weights, map_location="cpu")
    if variant.startswith("diffusers"):
        from diffusers import AutoencoderKLCogVideoX

        with torch.device("meta"):
            model = AutoencoderKLCogVideoX()
        model.load_state_dict(state, strict=True, assign=True)
    else:
        from cogvideox_core.families import VAEConfig
        from cogvideox_core.vae.model import CogVideoXVAE

        model = CogVideoXVAE(VAEConfig())
        model.load_state_dict(state, strict=True)
    del state
    return model.eval()


def _decode_fn(variant: str, model: torch.nn.Module, args: argparse.Namespace):
    from cogvideox_core.vae.tiling import tiled_decode

    tile = tuple(args.tile)
    if variant == "tiled":
        return lambda z: tiled_decode(model, z, tile=tile)
    if variant == "fast":
        return lambda z: tiled_decode(model, z, tile=tile, overlap=args.overlap, exact=False)
    if variant == "untiled":
        return model.decode
    if variant == "diffusers_tiled":
        model.enable_tiling(tile_sample_min_height=tile[0], tile_sample_min_width=tile[1])
    return lambda z: model.decode(z).sample


def worker(args: argparse.Namespace) -> None:
    torch.set_grad_enabled(False)
    model = _load_model(args.worker, args.weights)
    decode = _decode_fn(args.worker, model, args)
    z = torch.randn(1, 16, args.frames[0], args.height // 8, args.width // 8,
                    generator=torch.Generator().manual_seed(1))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from here
    base = _status("VmRSS")
    start = time.perf_counter()
    out = decode(z)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - base
    if args.save:
        torch.save(out, args.save)
    print(json.dumps({"peak": peak, "seconds": seconds, "shape": list(out.shape), "base": base}))


# ---- parent: run the workers, compare -----------------------------------------------------------

def run_worker(variant: str, frames: int, args: argparse.Namespace, weights: Path, save: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--weights", str(weights), "--save", str(save),
           "--frames", str(frames), "--height", str(args.height), "--width", str(args.width),
           "--tile", *map(str, args.tile), "--overlap", str(args.overlap)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"worker {variant} F_lat={frames} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_weights(path: Path) -> None:
    """Random weights with torch's default layer init (what diffusers' model gets), seed 0."""
    from cogvideox_core.families import VAEConfig
    from cogvideox_core.vae.model import CogVideoXVAE

    torch.manual_seed(0)
    torch.save(CogVideoXVAE(VAEConfig(), ops=torch.nn).state_dict(), path)


def _maxdiff(a: Path, b: Path) -> float:
    x, y = torch.load(a), torch.load(b)
    return (x.float() - y.float()).abs().max().item() if x.shape == y.shape else float("nan")


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    variants = args.variants
    print(f"CogVideoX VAE decode, full-size architecture, random weights, fp32, CPU "
          f"({torch.get_num_threads()} threads), {args.height}x{args.width}, tile {args.tile[0]}x{args.tile[1]}")
    print("peak = peak RSS above the baseline after the model is loaded (weights excluded); one process per run")
    rows: dict[int, dict[str, dict]] = {}
    diffs: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vae.pt"
        make_weights(weights)
        for frames in args.frames:
            rows[frames] = {v: run_worker(v, frames, args, weights, Path(tmp) / f"{v}.pt") for v in variants}
            out = {v: Path(tmp) / f"{v}.pt" for v in variants}
            diffs[frames] = {f"{LETTER[a]}-{LETTER[b]}": _maxdiff(out[a], out[b]) for a, b in PAIRS
                             if a in out and b in out}
            if "untiled" in out:
                y = torch.load(out["untiled"])
                diffs[frames]["|b| max"] = y.abs().max().item()
                if "fast" in out:
                    x = torch.load(out["fast"])
                    diffs[frames]["e-b"] = (x - y).abs().max().item()
                    diffs[frames]["e-b mean"] = (x - y).abs().mean().item()
            _print_frames(frames, rows[frames], diffs[frames])
    _print_result(rows, diffs)


def _print_frames(frames: int, row: dict[str, dict], diff: dict[str, float]) -> None:
    ref = row.get("diffusers") or next(iter(row.values()))
    print(f"\nF_lat={frames}")
    print(f"  {'variant':<14} {'peak MB':>9} {'seconds':>9} {'peak/(c)':>9} {'time/(c)':>9}  output shape")
    for v, r in row.items():
        print(f"  {VARIANTS[v]:<14} {r['peak'] / 2**20:9.1f} {r['seconds']:9.2f} {r['peak'] / ref['peak']:9.3f} "
              f"{r['seconds'] / ref['seconds']:9.3f}  {tuple(r['shape'])}")
    print("  max abs diff: " + ", ".join(f"{k} {v:.3g}" if v == v else f"{k} n/a (other size)"
                                          for k, v in diff.items()))


def _print_result(rows: dict[int, dict[str, dict]], diffs: dict[int, dict[str, float]]) -> None:
    if not all(v in r for r in rows.values() for v in ("tiled", "untiled", "diffusers")):
        return
    lo, hi = min(rows), max(rows)
    x = rows[hi]["tiled"]["peak"] / rows[lo]["tiled"]["peak"]
    y = max(r["tiled"]["peak"] / r["diffusers"]["peak"] for r in rows.values())
    z = sum(r["tiled"]["seconds"] for r in rows.values()) / sum(r["diffusers"]["seconds"] for r in rows.values())
    d = max(max(v["a-b"], v["a-c"]) for v in diffs.values())
    print(f"\npeak of (a) at F_lat={hi} over F_lat={lo}: {x:.3f}; (a)/(c) peak, worst: {y:.3f}; "
          f"(a)/(c) total time: {z:.3f}; (a) vs (b) and (c), max abs diff: {d:.3g}")
    print(f"RESULT peak_{hi}_over_{lo}={x:.3f} tiled_peak_over_diffusers={y:.3f} "
          f"tiled_time_over_diffusers={z:.3f} exact_maxdiff={d:.3g}")


if __name__ == "__main__":
    main()
