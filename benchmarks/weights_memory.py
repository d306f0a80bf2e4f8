"""Weight memory, peak RSS, step time and output error of each transformer weight storage.

The 5B-width transformer of ``benchmarks/sampling.py`` (``build``: 48 heads x 64, inner 3072,
T5 dim 4096, random N(0, 0.02) weights) with ``--layers`` blocks is saved once as a float32
diffusers folder (and, when the pack's GGUF loader is in the tree, as Q8_0 and Q4_0 ``.gguf``
files written with the ``gguf`` package's writer: the block matmul weights quantized, the rest
F32). Each storage is then loaded in a fresh subprocess, computing in ``--dtype`` (default
bfloat16; fp32 is the reference, computing in float32):

- ``bf16``: everything in bfloat16;
- ``fp8``: block matmul weights float8_e4m3fn, cast at each matmul (fp8 matmuls on capable GPUs);
- ``int8``: block matmul weights int8 + a float32 scale per output channel;
- ``q8_0`` / ``q4_0``: the GGUF files, their quantized tensors kept quantized.

Per storage, measured in its own process (so no allocator state carries over): the bytes the
model holds (``model_bytes``), the peak RSS while loading and during one step above the RSS
before loading (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), the median time of
``--repeats`` steps after one warm-up, and the max abs difference of the output to the fp32
model's output, the storage's own error: the same stored weights computed in float32 (``maxdiff``,
``rel`` = over the fp32 output's max abs; ``in dtype``: computed in ``--dtype``, where bf16's own
rounding of activations dominates). Ratios to bf16 are measured in this run. The last line is

    RESULT int8_peak_over_bf16=... q4_peak_over_bf16=... q8_maxdiff=... int8_maxdiff=... int8_step_time_over_bf16=...

(``*_peak_over_bf16``: peak RSS while loading over bf16's; ``*_maxdiff``: max abs difference to
fp32; ``nan`` where a storage is not available). Targets: int8 <= 0.55x and Q4_0 <= 0.35x of
bf16's weight memory (the block matmul weights are ~96% of a 5B block's values).

    .venv/bin/python benchmarks/weights_memory.py            # 2 layers, CPU
    .venv/bin/python benchmarks/weights_memory.py --quick    # 1 layer, one repeat: the test's run
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STORAGES = ("fp32", "bf16", "fp8", "int8", "q8_0", "q4_0")
logger = logging.getLogger("weights_memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="compute dtype of every storage but fp32")
    p.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="1 layer, 1 timed step (about a minute on a CPU)")
    p.add_argument("--workdir", help="where the model files go (default: a temporary folder)")
    p.add_argument("--child", choices=STORAGES, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.repeats = 1, 1
    return args


# ---- the child: one storage, one process ------------------------------------------------------

def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def _load(storage: str, folder: Path, dtype, device):
    import torch

    from cogvideox_core.loading.weights import load_transformer

    if storage == "fp32":
        return load_transformer(folder, torch.float32, device)[0]
    if storage in ("q8_0", "q4_0"):
        return load_transformer(folder.parent / f"{storage}.gguf", dtype, device, family="5b")[0]
    weight_dtype = {"bf16": None, "fp8": torch.float8_e4m3fn, "int8": torch.int8}[storage]
    return load_transformer(folder, dtype, device, weight_dtype=weight_dtype)[0]


def _inputs(model, dtype, device):
    """One CFG-batched step's input: 2 latent frames of 8x12 (96 video tokens) + 226 text."""
    import torch

    cfg = model.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, cfg.in_channels, 8, 12, generator=g).to(device, dtype)
    ctx = torch.randn(2, cfg.max_text_len, cfg.text_dim, generator=g).to(device, dtype)
    return x, torch.tensor([999.0, 437.5], device=device), ctx


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> None:
    """Load ``args.child``, step once, time ``--repeats`` steps; one JSON line on stdout."""
    import torch
    from safetensors.torch import save_file

    from cogvideox_core.loading.weights import model_bytes

    dtype = torch.float32 if args.child == "fp32" else getattr(torch, args.dtype)
    base = _status_kib("VmRSS")
    _reset_peak()
    model = _load(args.child, Path(args.model), dtype, args.device)
    load_peak = _status_kib("VmHWM") - base
    x, t, ctx = _inputs(model, dtype, args.device)
    _reset_peak()
    with torch.no_grad():
        out = model(x, t, ctx).float()
        step_peak = _status_kib("VmHWM") - base
        times = []
        for _ in range(args.repeats):
            _sync(args.device)
            start = time.perf_counter()
            model(x, t, ctx)
            _sync(args.device)
            times.append(time.perf_counter() - start)
    weights = model_bytes(model)
    del model
    save_file({"out": out.cpu().contiguous(), "out_fp32": _fp32_output(args).contiguous()}, args.out)
    print(json.dumps({"storage": args.child, "weights": weights, "load_peak": load_peak * 1024,
                      "step_peak": step_peak * 1024, "step_time": sorted(times)[len(times) // 2]}))


def _fp32_output(args: argparse.Namespace):
    """The step's output with the same stored weights computed in float32 (bf16: the bf16
    model cast up): the storage's own error, without the compute dtype's rounding."""
    import torch

    if args.child == "bf16":
        model = _load("bf16", Path(args.model), torch.bfloat16, args.device).float()
    else:
        model = _load(args.child, Path(args.model), torch.float32, args.device)
    with torch.no_grad():
        return model(*_inputs(model, torch.float32, args.device)).float().cpu()


# ---- the parent: files, children, table -------------------------------------------------------

def write_model(args: argparse.Namespace, folder: Path):
    """``sampling.build``'s reference model saved in bfloat16 (as the released 5B weights are),
    a diffusers folder; its state dict (bf16 values, float32 tensors)."""
    import torch
    from diffusers.utils import logging as diffusers_logging
    from sampling import build

    diffusers_logging.set_verbosity_error()  # its note on casting a model with .to()
    _family, ref, _ours = build(argparse.Namespace(family="5b", layers=args.layers, dtype="float32",
                                                   device="cpu"))
    del _ours
    ref = ref.to(torch.bfloat16)
    ref.save_pretrained(folder)
    return {k: v.float() for k, v in ref.state_dict().items()}


def full_size_ratios() -> dict[str, float]:
    """Weight bytes over bf16's of the real 5B transformer (42 layers, from shapes on the meta
    device): fp8 and int8 storage as the loaders apply them."""
    from cogvideox_core.families import get_family
    from cogvideox_core.loading.quantized import INT8_TRANSFORMER_KEYS
    from cogvideox_core.loading.weights import FP8_TRANSFORMER_KEYS
    from cogvideox_core.models.transformer import CogVideoXTransformer

    cfg = get_family("5b").transformer
    shapes = {k: v.shape for k, v in CogVideoXTransformer(cfg, device="meta").state_dict().items()}
    total = sum(s.numel() for s in shapes.values())
    fp8 = sum(s.numel() for k, s in shapes.items() if FP8_TRANSFORMER_KEYS.match(k))
    int8 = [s for k, s in shapes.items() if INT8_TRANSFORMER_KEYS.match(k)]
    int8_values, int8_rows = sum(s.numel() for s in int8), sum(s[0] for s in int8)
    return {"layers": cfg.num_layers, "fp8": (2 * total - fp8) / (2 * total),
            "int8": (2 * total - int8_values + 4 * int8_rows) / (2 * total)}


def write_gguf(state, path: Path, qtype: str) -> str | None:
    """``state`` as a GGUF file (block matmul weights in ``qtype``, the rest F32) if the pack
    reads GGUF files, else the reason it is not available."""
    try:
        import gguf

        from cogvideox_core.loading.gguf_file import GGUFLinear  # noqa: F401  the pack's GGUF loader
        from cogvideox_core.loading.weights import FP8_TRANSFORMER_KEYS
    except ImportError as e:
        return f"not available ({e})"
    writer = gguf.GGUFWriter(path=None, arch="cogvideox")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, t in state.items():
        kind = getattr(gguf.GGMLQuantizationType, qtype.upper() if FP8_TRANSFORMER_KEYS.match(key) else "F32")
        raw = gguf.quants.quantize(t.detach().float().numpy(), kind)
        writer.add_tensor(key, raw, raw_dtype=kind)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return None


def run_child(args: argparse.Namespace, storage: str, folder: Path) -> dict:
    out = folder.parent / f"{storage}.out.safetensors"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", storage, "--model", str(folder),
           "--out", str(out), "--dtype", args.dtype, "--repeats", str(args.repeats), "--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"storage": storage, "error": f"failed: {tail[0]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["out_file"] = str(out)
    return result


def add_diffs(results: dict[str, dict]) -> None:
    from safetensors.torch import load_file

    ref = load_file(results["fp32"]["out_file"])["out"]
    for r in results.values():
        if "out_file" in r:
            outs = load_file(r["out_file"])
            r["maxdiff"] = (outs["out_fp32"] - ref).abs().max().item()
            r["rel_maxdiff"] = r["maxdiff"] / ref.abs().max().item()
            r["maxdiff_compute"] = (outs["out"] - ref).abs().max().item()


def table(results: dict[str, dict]) -> list[str]:
    bf16 = results["bf16"]
    lines = [f"{'storage':8} {'weights MiB':>11} {'x bf16':>7} {'load peak MiB':>13} {'x bf16':>7} "
             f"{'step peak MiB':>13} {'step s':>8} {'x bf16':>7} {'maxdiff':>9} {'rel':>8} {'in dtype':>9}"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:8} {r['error']}")
            continue
        lines.append(f"{name:8} {r['weights'] / 2**20:11.1f} {r['weights'] / bf16['weights']:7.3f} "
                     f"{r['load_peak'] / 2**20:13.1f} {r['load_peak'] / bf16['load_peak']:7.3f} "
                     f"{r['step_peak'] / 2**20:13.1f} {r['step_time']:8.3f} "
                     f"{r['step_time'] / bf16['step_time']:7.3f} {r['maxdiff']:9.2e} {r['rel_maxdiff']:8.2e} "
                     f"{r['maxdiff_compute']:9.2e}")
    return lines


def result_line(results: dict[str, dict]) -> str:
    bf16 = results["bf16"]

    def ratio(name: str, field: str) -> float:
        r = results.get(name, {})
        return r[field] / bf16[field] if field in r else math.nan

    def diff(name: str) -> float:
        return results.get(name, {}).get("maxdiff", math.nan)

    return (f"RESULT int8_peak_over_bf16={ratio('int8', 'load_peak'):.3f} "
            f"q4_peak_over_bf16={ratio('q4_0', 'load_peak'):.3f} q8_maxdiff={diff('q8_0'):.3e} "
            f"int8_maxdiff={diff('int8'):.3e} int8_step_time_over_bf16={ratio('int8', 'step_time'):.3f}")


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "transformer"
        state = write_model(args, folder)
        missing = {q: write_gguf(state, Path(tmp) / f"{q}.gguf", q) for q in ("q8_0", "q4_0")}
        del state
        results = {}
        for storage in STORAGES:
            results[storage] = ({"storage": storage, "error": missing[storage]} if missing.get(storage)
                                else run_child(args, storage, folder))
        for name in ("fp32", "bf16"):
            if "error" in results[name]:
                raise RuntimeError(f"the {name} reference run {results[name]['error']}")
        add_diffs(results)
    print(f"5B-width transformer, {args.layers} layer(s), compute {args.dtype} (fp32: float32), "
          f"{args.device}, median of {args.repeats} step(s)")
    print("\n".join(table(results)))
    full = full_size_ratios()
    print(f"full 5B ({int(full['layers'])} layers, from shapes): weights over bf16: fp8 {full['fp8']:.3f}, "
          f"int8 {full['int8']:.3f}")
    print(result_line(results))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
