"""Weight memory, peak RSS, step time and output error of each transformer weight storage.

The 5B-width transformer of ``benchmarks/sampling.py`` (``build``: 48 heads x 64, inner 3072,
T5 dim 4096, random N(0, 0.02) weights) with ``--layers`` blocks is saved once as a float32
diffusers folder (and, when the pack's GGUF loader is in the tree, as Q8_0 and Q4_0 ``.gguf``
files written with the ``gguf`` package's writer, each tensor typed as city96's ComfyUI-GGUF
tools type it (:func:`gguf_type`): 1-D and tiny tensors F32, every other one quantized where its
rows fill whole blocks, so ``text_proj``, the time embedding, ``norm_out`` and ``proj_out`` are
quantized in the file too and dequantized at load, as in the files users have). Each storage is
then loaded in a fresh subprocess, computing in ``--dtype`` (default bfloat16; fp32 is the
reference, computing in float32):

- ``bf16``: everything in bfloat16;
- ``fp8``: block matmul weights float8_e4m3fn, cast at each matmul (fp8 matmuls on capable GPUs);
- ``int8``: block matmul weights int8 + a float32 scale per output channel, the pack's own
  matmul (``COGVIDEOX_INT8_KERNEL=pack``);
- ``int8_ao``: the same int8 storage on torchao's int8 weight-only linear
  (:func:`~cogvideox_core.quant.int8_path` ``"torchao"``), when torchao is installed;
- ``q8_0`` / ``q4_0``: the GGUF files, their quantized tensors kept quantized.

Per storage, measured in its own process (so no allocator state carries over): the bytes the
model holds (``model_bytes``), the peak RSS while loading and during one step above the RSS
before loading (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), the median time of
``--repeats`` steps after one warm-up, and the max abs difference of the output to the fp32
model's output, the storage's own error: the same stored weights computed in float32 (``maxdiff``,
``rel`` = over the fp32 output's max abs; ``in dtype``: computed in ``--dtype``, where bf16's own
rounding of activations dominates). Ratios to bf16 are measured in this run. The last line is

    RESULT int8_peak_over_bf16=... q4_peak_over_bf16=... q8_maxdiff=... int8_maxdiff=... int8_step_time_over_bf16=...
           int8_weights_over_bf16=... q4_weights_over_bf16=... int8_weights_full=... q4_weights_full=...
           int8_torchao_step_time_over_bf16=...

(one line; measured in this run at ``--layers``: ``*_peak_over_bf16``, peak RSS while loading
over bf16's; ``*_maxdiff``, max abs difference to fp32; ``*_weights_over_bf16``, the bytes the
model holds over bf16's; computed, not measured: ``*_weights_full``, the same ratio for the
full-depth 42-layer 5B transformer from its shapes (:func:`full_size_ratios`); ``nan`` where a
storage is not available). Targets: int8 <= 0.55x and Q4_0 <= 0.35x of bf16's weight memory.

The weight ratios depend on depth: the tensors outside the blocks (``text_proj`` 3072x4096, the
patch and time embeddings, ``norm_out``, ``proj_out``: ~18M values, kept in the compute dtype by
every storage) are a large share of a 1-2 layer model and ~0.3% of the real one, so at
``--quick`` the measured ratios are well above the full-depth ones; ``--layers 8`` comes within
~0.01 of them. Before the RESULT line the script prints the full-depth table (int8, fp8, Q8_0,
Q4_0 weight bytes over bf16's, for the 5B and 1.5-5B configs; no model built). Loading int8 also
holds the one bf16 weight being read before it is quantized (the largest, a 3072x12288
feed-forward weight: 72 MiB at full size against ~5.2 GiB of int8 weights), which is why the
load peak ratio sits above the weight ratio, far more so at small depth. Measured at ``--layers
8`` the int8 load peak exceeded its weights by 95 to 510 MiB from run to run: freed read buffers
that glibc keeps (its dynamic mmap threshold rises to 32 MiB after large frees, so the 18 MiB
attention weights come from the heap); with ``MALLOC_MMAP_THRESHOLD_=1048576`` the excess was
73 MiB, the one tensor, in two runs.

The GGUF rows' errors include the tensors outside the blocks that the file quantizes and int8 and
fp8 keep in the compute dtype: ``proj_out`` (the output layer: each output carries ~step/sqrt(12)
relative noise, Q8_0 ~0.5%, Q4_0 ~8% std), ``norm_out``, the time embedding, ``text_proj``. At 1
layer, writing ``proj_out`` alone as F32 took Q4_0's ``rel`` from 0.135 to 0.096.

    .venv/bin/python benchmarks/weights_memory.py            # 2 layers, CPU
    .venv/bin/python benchmarks/weights_memory.py --layers 8 # near full-depth ratios (~4 min, 2 cores, ~13 GB RAM)
    .venv/bin/python benchmarks/weights_memory.py --quick    # 1 layer, one repeat: the test's run
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STORAGES = ("fp32", "bf16", "fp8", "int8", "int8_ao", "q8_0", "q4_0")
INT8_KERNEL = {"int8": "pack", "int8_ao": "auto"}  # COGVIDEOX_INT8_KERNEL of the int8 children
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
    weight_dtype = {"bf16": None, "fp8": torch.float8_e4m3fn, "int8": torch.int8, "int8_ao": torch.int8}[storage]
    return load_transformer(folder, dtype, device, weight_dtype=weight_dtype)[0]


def _check_int8_path(storage: str, dtype, device: str) -> None:
    """``int8_ao`` runs torchao's int8 matmul and ``int8`` the pack's own (a float16 ``int8_ao``
    fails: torchao's path is not used there), in the step's dtype and the fp32 output's."""
    import torch

    from cogvideox_core.quant import int8_path

    if storage not in INT8_KERNEL:
        return
    for compute in (dtype, torch.float32):
        path = int8_path(torch.device(device), compute, False)
        if (path == "torchao") != (storage == "int8_ao"):
            raise RuntimeError(f"{storage}: the int8 matmul path in {compute} on {device} is {path!r}")


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
    _check_int8_path(args.child, dtype, args.device)
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


FULL_FAMILIES = ("5b", "1.5-5b")
# city96/ComfyUI-GGUF tools/convert.py: tensors of at most this many values stay F32.
QUANTIZATION_THRESHOLD = 1024


def gguf_type(shape: tuple[int, ...], qtype: str) -> str:
    """The GGUF type ComfyUI-GGUF's tools give a tensor of a bf16 model at ``qtype``: 1-D and
    tiny (<= 1024 values) ones F32 (``convert.py``), every other one ``qtype`` (its patched
    ``llama-quantize`` quantizes every weight of 2 or more dims) where the last dim fills whole
    blocks, else BF16, as ``convert.py`` writes a bf16 source (the 5B patch embed's 2x2 conv)."""
    from cogvideox_core.gguf_quants import QUANT_TYPES

    if len(shape) == 1 or math.prod(shape) <= QUANTIZATION_THRESHOLD:
        return "F32"
    return qtype.upper() if shape[-1] % QUANT_TYPES[qtype.upper()].block == 0 else "BF16"


def _stored_bytes(shapes: dict[str, tuple[int, ...]], linears: set[str]) -> dict[str, int]:
    """Bytes the loaders hold per storage for a transformer of these shapes: the quantized
    weights as :data:`INT8_TRANSFORMER_KEYS` / ``FP8_TRANSFORMER_KEYS`` / ``gguf_file``'s
    kept block linears pick them, everything else in bf16 (the compute dtype)."""
    from cogvideox_core.gguf_quants import quantized_nbytes
    from cogvideox_core.loading.gguf_file import BLOCK_WEIGHTS
    from cogvideox_core.loading.quantized import INT8_TRANSFORMER_KEYS
    from cogvideox_core.loading.weights import FP8_TRANSFORMER_KEYS

    def nbytes(storage: str, key: str, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        if storage == "fp8" and FP8_TRANSFORMER_KEYS.match(key):
            return n
        if storage == "int8" and INT8_TRANSFORMER_KEYS.match(key):
            return n + 4 * shape[0]  # int8 codes + a float32 scale per output channel
        if (storage in ("q8_0", "q4_0") and BLOCK_WEIGHTS.match(key) and key in linears
                and gguf_type(shape, storage) == storage.upper()):
            return quantized_nbytes(storage.upper(), shape)
        return 2 * n

    return {s: sum(nbytes(s, k, v) for k, v in shapes.items()) for s in ("bf16", "fp8", "int8", "q8_0", "q4_0")}


def full_size_ratios(name: str = "5b") -> dict[str, float]:
    """Weight bytes over bf16's of family ``name``'s full-depth transformer, from its shapes
    (built on the meta device: no memory), and the largest weight read in bf16 before int8
    quantizes it (``read_mib``: the load peak's excess over the int8 weights)."""
    from torch import nn

    from cogvideox_core.families import get_family
    from cogvideox_core.loading.quantized import INT8_TRANSFORMER_KEYS
    from cogvideox_core.models.transformer import CogVideoXTransformer

    cfg = get_family(name).transformer
    model = CogVideoXTransformer(cfg, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    stored = _stored_bytes(shapes, linears)
    read = max(2 * math.prod(s) for k, s in shapes.items() if INT8_TRANSFORMER_KEYS.match(k))
    return {"layers": cfg.num_layers, "bf16_gib": stored["bf16"] / 2**30, "read_mib": read / 2**20,
            **{s: stored[s] / stored["bf16"] for s in ("int8", "fp8", "q8_0", "q4_0")}}


def full_size_table(names: tuple[str, ...] = FULL_FAMILIES) -> list[str]:
    """The full-depth weight-byte ratios of ``names`` (see :func:`full_size_ratios`)."""
    header = (f"{'family':8} {'layers':>6} {'bf16 GiB':>8} {'int8':>6} {'fp8':>6} {'q8_0':>6} {'q4_0':>6} "
              f"{'bf16 read while quantizing MiB':>30}")
    lines = ["full depth, from shapes (no model built): weight bytes over bf16's", header]
    for name in names:
        r = full_size_ratios(name)
        lines.append(f"{name:8} {int(r['layers']):6d} {r['bf16_gib']:8.2f} {r['int8']:6.3f} {r['fp8']:6.3f} "
                     f"{r['q8_0']:6.3f} {r['q4_0']:6.3f} {r['read_mib']:30.1f}")
    return lines


def write_gguf(state, path: Path, qtype: str) -> str | None:
    """``state`` as a GGUF file, each tensor typed as ComfyUI-GGUF's tools type it
    (:func:`gguf_type`), if the pack reads GGUF files, else the reason it is not available."""
    try:
        import gguf

        from cogvideox_core.loading.gguf_file import GGUFLinear  # noqa: F401  the pack's GGUF loader
    except ImportError as e:
        return f"not available ({e})"
    writer = gguf.GGUFWriter(path=None, arch="cogvideox")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, t in state.items():
        kind = getattr(gguf.GGMLQuantizationType, gguf_type(tuple(t.shape), qtype))
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
    env = {**os.environ, "COGVIDEOX_INT8_KERNEL": INT8_KERNEL.get(storage, "auto")}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
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


def result_line(results: dict[str, dict], full: dict[str, float]) -> str:
    """The RESULT line: the issue's five keys, then the measured weight ratios
    (``*_weights_over_bf16``), the full-depth 5B ones from shapes (``*_weights_full``) and the
    torchao int8 path's step time over bf16's (``nan`` without torchao)."""
    bf16 = results["bf16"]

    def ratio(name: str, field: str) -> float:
        r = results.get(name, {})
        return r[field] / bf16[field] if field in r else math.nan

    def diff(name: str) -> float:
        return results.get(name, {}).get("maxdiff", math.nan)

    return (f"RESULT int8_peak_over_bf16={ratio('int8', 'load_peak'):.3f} "
            f"q4_peak_over_bf16={ratio('q4_0', 'load_peak'):.3f} q8_maxdiff={diff('q8_0'):.3e} "
            f"int8_maxdiff={diff('int8'):.3e} int8_step_time_over_bf16={ratio('int8', 'step_time'):.3f} "
            f"int8_weights_over_bf16={ratio('int8', 'weights'):.3f} "
            f"q4_weights_over_bf16={ratio('q4_0', 'weights'):.3f} "
            f"int8_weights_full={full['int8']:.3f} q4_weights_full={full['q4_0']:.3f} "
            f"int8_torchao_step_time_over_bf16={ratio('int8_ao', 'step_time'):.3f}")


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "transformer"
        state = write_model(args, folder)
        missing = {q: write_gguf(state, Path(tmp) / f"{q}.gguf", q) for q in ("q8_0", "q4_0")}
        if importlib.util.find_spec("torchao") is None:
            missing["int8_ao"] = "not available (torchao is not installed)"
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
    print("\n".join(full_size_table()))
    full = full_size_ratios("5b")
    print(f"full-depth 5B int8 load, by design: its weights plus the one bf16 weight being quantized, "
          f"at most {full['read_mib']:.0f} MiB over {full['int8'] * full['bf16_gib']:.2f} GiB")
    print(result_line(results, full))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
