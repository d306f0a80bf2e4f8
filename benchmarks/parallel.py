"""CFG parallel and Ulysses on this CPU: 1 process against 2 (gloo), same tiny-but-not-trivial model.

Every run is a fresh spawned process group with one torch thread per rank, so a 2-rank run uses
two cores where the single run uses one: the ratios say how much of the work splits and what
the collectives cost, not what GPUs connected by NVLink would show (xDiT's figures are the
reference there: 4.29x for 2B, 7.75x for 5B, 6.12x for 1.5-5B on 8 GPUs). Measured per run: wall time of the sampling (after
a one-step warm-up in the same process), each rank's peak RSS growth from the built model to
the end (``ru_maxrss`` after minus before: activations and tables, not torch's own few hundred
MB), and the bytes each rank hands to collectives per step (the one-time input broadcasts are
spread over the steps). Last line::

    RESULT cfg2_time_ratio=... ulysses2_time_ratio=... ulysses2_peak_ratio=... parity_maxdiff=... \
        cfg2_cpu_ratio=... ulysses2_cpu_ratio=...

``*_time_ratio``: 2-rank wall time / 1-process wall time (below 1 is faster; on a machine whose
cores are busy with other work the two ranks share what is free, so the CPU-time ratios
``*_cpu_ratio`` that follow on the line show the split of the work itself: the busiest rank's
CPU seconds over the single process's); ``ulysses2_peak_ratio``:
largest rank's peak growth / the single process's; ``parity_maxdiff``: the largest difference of
the final latents of either 2-rank run from the single-process latents (float32).

    .venv/bin/python benchmarks/parallel.py [--layers 2] [--steps 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cogvideox_core.generation.pipeline import GenerateRequest, Models, sample_latents, validate  # noqa: E402
from cogvideox_core.models.transformer import CogVideoXTransformer  # noqa: E402
from cogvideox_core.parallel import ParallelConfig, init_from_env  # noqa: E402
from cogvideox_core.parallel import comm  # noqa: E402
from cogvideox_core.parallel import run as prun  # noqa: E402
from cogvideox_core.parallel.local import RankFailure, run_local  # noqa: E402
from cogvideox_core.runtime import TorchRuntime  # noqa: E402
from cogvideox_core.tiny import init_random, tiny_family  # noqa: E402

logger = logging.getLogger("benchmarks.parallel")

FAMILY = "2b"  # additive sincos: 226 text rows + the video tokens
HEADS, HEAD_DIM = 4, 64  # inner dim 256
FRAMES, HEIGHT, WIDTH = 33, 256, 384  # 9 latents x 16 x 24 = 3456 video tokens


def make_models(layers: int) -> Models:
    family = tiny_family(FAMILY, small_grid=False)
    cfg = dataclasses.replace(family.transformer, num_heads=HEADS, head_dim=HEAD_DIM, num_layers=layers)
    family = dataclasses.replace(family, transformer=cfg)
    return Models(init_random(CogVideoXTransformer(cfg), 0).eval(), family)


def make_request(steps: int) -> GenerateRequest:
    gen = torch.Generator().manual_seed(1)
    cond, uncond = (torch.randn(1, 226, 32, generator=gen) for _ in range(2))
    return GenerateRequest(frames=FRAMES, height=HEIGHT, width=WIDTH, steps=steps, cfg=6.0, seed=2,
                           sampler="ddim", prompt_embeds=cond, negative_embeds=uncond)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench(parallel: str | None, layers: int, steps: int) -> dict[str, object]:
    """One run on this rank: seconds, peak RSS growth (MiB), bytes per step, final latents."""
    models, runtime = make_models(layers), TorchRuntime(show_progress=False)
    mesh = None if parallel is None else init_from_env(ParallelConfig.parse(parallel), "cpu")[0]

    def sample(req: GenerateRequest) -> torch.Tensor:
        plan = validate(models, req)
        if mesh is None:
            return sample_latents(models, req, runtime, plan)
        return prun.sample_latents(models, req, runtime, plan, mesh)

    before = _peak_mib()  # weights made; the peak growth from here is the sampling's
    with torch.no_grad():
        sample(make_request(1))  # warm-up: lazy initialisation, tables, gloo connections
        comm.reset_volume()
        start, cpu = time.perf_counter(), time.process_time()
        latents = sample(make_request(steps))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "peak_mib": _peak_mib() - before, "latents": latents,
            "volume": {k: v / steps for k, v in comm.VOLUME.items()}}


def _run(name: str, world: int, parallel: str | None, args: argparse.Namespace) -> list[dict]:
    results = run_local(bench, world, parallel, args.layers, args.steps, timeout_s=600)
    failed = [r for r in results if isinstance(r, RankFailure)]
    if failed:
        raise RuntimeError(f"{name}: " + "\n".join(f.trace for f in failed))
    for rank, r in enumerate(results):
        volume = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sorted(r["volume"].items())) or "none"
        logger.info("%-9s rank %d: %.2f s (CPU %.2f s), peak RSS growth %.1f MiB, sent per step: %s",
                    name, rank, r["seconds"], r["cpu"], r["peak_mib"], volume)
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("model: %s-like, %d layers, %d heads x %d, %d frames %dx%d (3456 video + 226 text tokens), "
                "%d ddim steps, cfg 6, 1 thread per rank", FAMILY, args.layers, HEADS, HEAD_DIM, FRAMES,
                HEIGHT, WIDTH, args.steps)
    single = _run("1 process", 1, None, args)[0]
    cfg2 = _run("cfg=2", 2, "cfg=2", args)
    uly2 = _run("ulysses=2", 2, "ulysses=2", args)
    ratio = lambda runs, key="seconds": max(r[key] for r in runs) / single[key]  # noqa: E731
    peak = max(r["peak_mib"] for r in uly2) / max(single["peak_mib"], 1e-9)
    diff = max(float((r["latents"] - single["latents"]).abs().max()) for r in cfg2 + uly2)
    result = {"cfg2_time_ratio": ratio(cfg2), "ulysses2_time_ratio": ratio(uly2), "ulysses2_peak_ratio": peak,
              "parity_maxdiff": diff, "cfg2_cpu_ratio": ratio(cfg2, "cpu"), "ulysses2_cpu_ratio": ratio(uly2, "cpu")}
    sys.stdout.write("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items()) + "\n")
    return result


if __name__ == "__main__":
    main()
