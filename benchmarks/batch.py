"""Batch generation: K prompts as one batched job vs K single runs, in one process.

A CogVideoX transformer of a real family's architecture with ``--heads`` x 64 width and
``--layers`` layers, the tiny VAE and T5 of :mod:`cogvideox_core.tiny`, random weights. The same K
prompt-seed pairs run (a) one :func:`~cogvideox_core.generation.pipeline.generate` call each and
(b) one :func:`~cogvideox_core.generation.batch.generate_batch` job (batches as large as memory
allows, or ``--batch-size``), decoding included, nothing written. ``--repeats`` rounds alternate
the order; the medians are printed. Peak: the process's resident set above what it held before the
call, sampled every millisecond (CUDA: the allocator's peak), for the whole job vs ONE single run.
``maxdiff``: the largest difference of a batched video to its single run (frames 0..1).

Last line: ``RESULT batch_time_over_singles=<job / sum of singles> batch_peak_over_single=<job's
peak / one single run's peak> batch_rows=<videos per batch> maxdiff=...``.

    .venv/bin/python benchmarks/batch.py                          # 4 prompts, 5B arch, CPU
    .venv/bin/python benchmarks/batch.py --prompts 2 --layers 1 --steps 2 --repeats 1   # smoke
    .venv/bin/python benchmarks/batch.py --device cuda --heads 48 --layers 8 --frames 49 --height 480 --width 720

On a CPU the batch saves little time: the matmuls already fill the cores at one video, and a
batch's activations take memory in proportion to its rows; on a GPU the rows fill the device.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.measure import PeakMemory  # noqa: E402
from cogvideox_core.generation.batch import FinishedVideo, batch_items, generate_batch  # noqa: E402
from cogvideox_core.generation.pipeline import GenerateRequest, generate  # noqa: E402
from cogvideox_core.models.transformer import CogVideoXTransformer  # noqa: E402
from cogvideox_core.runtime import TorchRuntime  # noqa: E402
from cogvideox_core.tiny import init_random, random_models  # noqa: E402

logger = logging.getLogger("benchmarks.batch")
PROMPTS = ("A fitness coach in a bright gym demonstrates a squat",
           "A fitness coach in a bright gym demonstrates a deadlift",
           "A fitness coach in a bright gym demonstrates a bench press",
           "A fitness coach in a bright gym does a pull-up")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="5b")
    p.add_argument("--prompts", type=int, default=4, help="K prompts, one video each")
    p.add_argument("--heads", type=int, default=8, help="attention heads of 64 (5B: 48)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, help="videos per batch (default: what memory allows)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """Tiny VAE and T5, and a transformer of ``--heads`` x 64 and ``--layers`` layers."""
    models = random_models(args.family)
    cfg = dataclasses.replace(models.family.transformer, num_heads=args.heads, head_dim=64,
                              num_layers=args.layers, time_embed_dim=64)
    transformer = init_random(CogVideoXTransformer(cfg), seed=0).eval().to(args.device)
    family = dataclasses.replace(models.family, transformer=cfg)
    return dataclasses.replace(models, transformer=transformer, family=family,
                               vae=models.vae.to(args.device),
                               text_encoder=dataclasses.replace(models.text_encoder,
                                                                model=models.text_encoder.model.to(args.device)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build(args)
    request = GenerateRequest(frames=args.frames, height=args.height, width=args.width, steps=args.steps,
                              cfg=6.0, negative_prompt="blurry")
    items = batch_items([PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f", take {i}")
                         for i in range(args.prompts)], [42])
    runtime = TorchRuntime(device=args.device, show_progress=False)
    peak = PeakMemory(args.device)
    singles: dict[int, torch.Tensor] = {}
    batched: dict[int, torch.Tensor] = {}
    rows: list[int] = []

    def run_singles() -> None:
        for i, item in enumerate(items):
            singles[i] = generate(models, dataclasses.replace(request, prompt=item.prompt, seed=item.seed), runtime)

    def run_batch() -> None:
        def keep(video: FinishedVideo) -> None:
            batched[items.index(video.item)] = video.frames

        generate_batch(models, request, items, keep, runtime, max_batch=args.batch_size)

    one = items[0]
    logger.info("warm-up")
    generate(models, dataclasses.replace(request, prompt=one.prompt, seed=one.seed, steps=1), runtime)
    times: dict[str, list[float]] = {"singles": [], "batch": []}
    peaks: dict[str, list[int]] = {"single": [], "batch": []}
    for r in range(args.repeats):
        order = [("singles", run_singles), ("batch", run_batch)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            logger.info("round %d %s: %.2f s", r + 1, name, times[name][-1])
        peaks["single"].append(peak.measure(lambda: generate(models, dataclasses.replace(
            request, prompt=one.prompt, seed=one.seed), runtime)))
        peaks["batch"].append(peak.measure(run_batch))
    rows.append(_rows_logged(models, request, runtime, items, args))
    maxdiff = max(float((batched[i] - singles[i]).abs().max()) for i in singles)
    result = {"batch_time_over_singles": statistics.median(b / s for b, s in zip(times["batch"], times["singles"])),
              "batch_peak_over_single": statistics.median(peaks["batch"]) / max(statistics.median(peaks["single"]), 1),
              "batch_rows": float(rows[0]), "maxdiff": maxdiff}
    logger.info("%d prompts, %s arch %d heads x 64, %d layers, %d frames %dx%d, %d steps, %s: singles %.2f s, "
                "batch %.2f s (medians); peak one single %.1f MiB, batch job %.1f MiB",
                len(items), args.family, args.heads, args.layers, args.frames, args.width, args.height,
                args.steps, args.device, statistics.median(times["singles"]), statistics.median(times["batch"]),
                statistics.median(peaks["single"]) / 2**20, statistics.median(peaks["batch"]) / 2**20)
    sys.stdout.write("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items()) + "\n")
    return result


def _rows_logged(models, request, runtime, items, args) -> int:
    """The videos per batch the job chose (what :func:`batch_rows` gives for this run)."""
    from cogvideox_core.generation.batch import batch_rows
    from cogvideox_core.generation.pipeline import validate

    plan = validate(models, dataclasses.replace(request, prompt=items[0].prompt))
    return batch_rows(models, request, plan, runtime, len(items), args.batch_size)


if __name__ == "__main__":
    main()
