"""``generate --weight-dtype`` (auto, float, fp8, int8) and the memory check's weight bytes.

The CLI's int8 run must equal the in-process pipeline with an int8-loaded transformer (same
weights, same quantization: bit for bit); ``auto`` keeps fp8 files in fp8; the memory check's
weight bytes for each storage equal what the loaded transformer holds (fp8 and int8: 1 byte a
block matmul weight, int8 plus a float32 scale per output channel).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cogvideox_core.cli import preflight
from cogvideox_core.cli.main import main
from cogvideox_core.cli.storage import compute_dtype, storage_dtype
from cogvideox_core.generation.pipeline import GenerateRequest, generate
from cogvideox_core.loading.weights import FP8_TRANSFORMER_KEYS, load_transformer, model_bytes
from test_scaled_fp8 import comfy_scaled_fp8
from weights_util import random_transformer, save, state

ARGS = ["--prompt", "a lighthouse at dusk", "--frames", "9", "--height", "32", "--width", "48",
        "--steps", "2", "--seed", "3", "--device", "cpu", "--sampler", "ddim"]


def test_generate_int8_equals_the_pipeline(tiny_5b, tmp_path: Path) -> None:
    root, models = tiny_5b
    out = tmp_path / "frames.safetensors"
    assert main(["generate", "--model", str(root), *ARGS, "--weight-dtype", "int8", "--out", str(out)]) == 0
    transformer, _ = load_transformer(root, torch.float32, weight_dtype=torch.int8)
    int8 = dataclasses.replace(models, transformer=transformer)
    request = GenerateRequest(prompt="a lighthouse at dusk", frames=9, height=32, width=48, steps=2, seed=3,
                              sampler="ddim")
    assert torch.equal(load_file(str(out))["frames"], generate(int8, request))


def args(model: Path | str, weight_dtype: str | None, dtype: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(model=str(model), weight_dtype=weight_dtype, dtype=dtype)


def test_weight_dtype_choices(tiny_5b, tmp_path: Path) -> None:
    root, _ = tiny_5b
    cpu = torch.device("cpu")
    assert storage_dtype(args(root, "auto"), torch.float32) is None  # a float32 tree: the compute dtype
    assert storage_dtype(args(root, None), torch.float32) is None
    assert storage_dtype(args(root, "int8"), torch.float32) == torch.int8
    assert storage_dtype(args(root, "fp8_e5m2"), torch.bfloat16) == torch.float8_e5m2
    assert compute_dtype(args(root, "bf16"), cpu) == torch.bfloat16  # no --dtype: the float storage
    assert compute_dtype(args(root, "int8"), cpu) == torch.float32
    assert storage_dtype(args(root, "bf16"), torch.bfloat16) is None
    with pytest.raises(ValueError, match="--weight-dtype bf16 with --dtype float32: float storage must be"):
        storage_dtype(args(root, "bf16", "float32"), torch.float32)
    stored, _ = comfy_scaled_fp8(state(random_transformer("2b", small_sample=False)))
    scaled = save(stored, tmp_path / "scaled.safetensors")
    assert storage_dtype(args(scaled, "auto"), torch.bfloat16) == torch.float8_e4m3fn
    kijai = {k: v.to(torch.float8_e5m2 if FP8_TRANSFORMER_KEYS.match(k) else torch.bfloat16)
             for k, v in state(random_transformer("2b", small_sample=False)).items()}
    assert storage_dtype(args(save(kijai, tmp_path / "fp8.safetensors"), "auto"), torch.bfloat16) == torch.float8_e5m2


def test_cli_refuses_no_fp8_matmul_with_int8(tiny_5b, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, _ = tiny_5b
    code = main(["generate", "--model", str(root), *ARGS, "--weight-dtype", "int8", "--no-fp8-matmul",
                 "--out", str(tmp_path / "v.mp4")])
    assert code != 0 and "--no-fp8-matmul with --weight-dtype int8" in capsys.readouterr().err


def test_cli_rejects_an_unknown_weight_dtype(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", "m", "--weight-dtype", "int4", "--out", str(tmp_path / "v.mp4")])
    assert e.value.code == 2 and "--weight-dtype: invalid choice: 'int4'" in capsys.readouterr().err


@pytest.mark.parametrize("weight_dtype", [None, torch.float8_e4m3fn, torch.int8])
def test_memory_check_counts_what_the_storage_holds(tiny_5b, weight_dtype: torch.dtype | None) -> None:
    """The weight bytes the memory check adds equal the loaded transformer's bytes for each
    storage (before this, fp8 block weights were counted at the compute dtype's 4 bytes)."""
    root, _ = tiny_5b
    sizes = preflight.check_components(argparse.Namespace(model=str(root), vae=None, text_encoder=None))
    only = dataclasses.replace(sizes, vae=0, text_encoder=0)
    model, _ = load_transformer(root, torch.float32, weight_dtype=weight_dtype)
    assert only.nbytes(torch.float32, weight_dtype) == model_bytes(model)
    if weight_dtype is not None:
        stored = sizes.int8_weights if weight_dtype == torch.int8 else sizes.block_weights
        scales = 4 * sizes.int8_rows if weight_dtype == torch.int8 else 0
        assert only.nbytes(torch.float32, weight_dtype) == only.nbytes(torch.float32) - 3 * stored + scales
