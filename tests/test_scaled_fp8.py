"""ComfyUI "scaled fp8" transformer files: detected from the header, kept in fp8 with their scale.

The file is made here the way ComfyUI's quantizer writes one (``comfy/ops.py``
``scaled_fp8_ops``, ``comfy/model_base.py`` ``state_dict_for_saving``): every quantized linear's
``<layer>.weight`` is ``(w / s).to(float8_e4m3fn)`` with ``s = absmax(w) / 448`` stored beside it
as a float32 scalar ``<layer>.scale_weight`` (some also carry ``<layer>.scale_input``), the rest
stays bf16/fp32, a ``scaled_fp8`` marker key is an empty tensor of the fp8 dtype, and the keys
are ComfyUI's (``model.diffusion_model.`` prefix).

Tolerance, derived: e4m3 keeps 3 mantissa bits, so a normal value is rounded to within half a
step, 2^-4 of its binade's lower end: a relative error <= 2^-4 (6.25%) per element (values in the
subnormal range below 2^-6 * s are off by at most half the subnormal step, 2^-10 * s, absolute).
One layer's output error is then at most 2^-4 * sum_j |W_ij x_j|; with independent rounding
errors it is about 2^-4 / sqrt(3) of that sum's root-square, a few percent of |y| at most. So:

- against the model holding the dequantized weights ``q * s`` (the numbers the file stands for)
  the output is equal to float32 rounding (``TOL``): fp8 storage adds nothing of its own;
- against the original fp32 model the relative difference stays under ``FP8_REL = 2^-4``, the
  per-element worst case (measured values are far below it).
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cogvideox_core.loading.files import locate
from cogvideox_core.loading.quantized import scaled_fp8_dtype
from cogvideox_core.loading.weights import FP8_TRANSFORMER_KEYS, inspect_path, load_transformer
from cogvideox_core.ops import supports_fp8_compute
from cogvideox_core.quant import Int8Linear, ScaledFP8Linear
from test_weights import compare_outputs
from weights_util import comfyui_key, random_transformer, save, state

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
FP8_REL = 2**-4
ADALN = "transformer_blocks.0.norm1.linear.weight"  # quantized by ComfyUI, not kept fp8 here


def comfy_scaled_fp8(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(file state, dequantized state): ``sd`` as ComfyUI's quantizer writes it (see the module
    docstring), its block linears and one adaLN linear quantized, and the weights it stands for."""
    stored, expected = {}, {}
    for key, value in sd.items():
        if FP8_TRANSFORMER_KEYS.match(key) or key == ADALN:
            scale = (value.abs().max().float() / 448.0).reshape(())
            q = (value / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
            layer = comfyui_key(key)[: -len("weight")]
            stored[layer + "weight"], stored[layer + "scale_weight"] = q, scale
            if key.endswith("to_q.weight"):
                stored[layer + "scale_input"] = torch.ones((), dtype=torch.float32)
            expected[key] = q.float() * scale
        else:
            stored[comfyui_key(key)] = value
            expected[key] = value
    stored = {f"model.diffusion_model.{k}": v for k, v in stored.items()}
    stored["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return stored, expected


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, torch.nn.Module, Path]:
    """(fp32 reference, the reference with the file's dequantized weights, the scaled fp8 file)."""
    ref = random_transformer("5b", small_sample=False)  # the sample size a file without config implies
    stored, expected = comfy_scaled_fp8(state(ref))
    path = save(stored, tmp_path_factory.mktemp("scaled") / "cogvideox5b_fp8_e4m3fn_scaled.safetensors")
    dequantized = copy.deepcopy(ref)
    dequantized.load_state_dict(expected)
    return ref, dequantized, path


def test_detected_from_the_header(scaled) -> None:
    _, _, path = scaled
    assert scaled_fp8_dtype(locate(path)["transformer"]) == torch.float8_e4m3fn
    details = inspect_path(path).to_dict()["details"]["transformer"]
    assert details["quantization"] == "scaled fp8 (float8_e4m3fn)"
    out = subprocess.run([sys.executable, "-m", "cogvideox_core", "info", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "scaled fp8 (float8_e4m3fn)" in out.stdout, out.stderr


def test_kept_in_fp8_with_its_scale(scaled) -> None:
    ref, dequantized, path = scaled
    model, _ = load_transformer(path, dtype=torch.float32, family="5b", weight_dtype=torch.float8_e4m3fn)
    stored = dict(_read(path))
    kept = [n for n, m in model.named_modules() if isinstance(m, ScaledFP8Linear)]
    assert {f"{n}.weight" for n in kept} == {k for k in state(ref) if FP8_TRANSFORMER_KEYS.match(k)}
    for name in kept:  # the file's bytes and scale, not re-rounded
        layer = model.get_submodule(name)
        key = "model.diffusion_model." + comfyui_key(f"{name}.weight")
        assert layer.weight.dtype == torch.float8_e4m3fn
        assert torch.equal(layer.weight.view(torch.uint8), stored[key].view(torch.uint8))
        assert torch.equal(layer.scale_weight, stored[key[: -len("weight")] + "scale_weight"])
    adaln = model.get_parameter(ADALN)  # outside the block linears: dequantized while reading
    assert adaln.dtype == torch.float32 and torch.equal(adaln, dequantized.state_dict()[ADALN])
    assert compare_outputs(dequantized, model, 3, 8, 12) <= TOL
    assert compare_outputs(ref, model, 3, 8, 12, relative=True) <= FP8_REL


def test_default_dequantizes_and_int8_requantizes(scaled) -> None:
    """Without fp8 storage asked for, the file is dequantized (``weight * scale_weight``) as
    before; int8 quantizes the dequantized weights."""
    ref, dequantized, path = scaled
    plain, _ = load_transformer(path, dtype=torch.float32, family="5b")
    assert not any(isinstance(m, ScaledFP8Linear) for m in plain.modules())
    assert compare_outputs(dequantized, plain, 3, 8, 12) <= TOL
    int8, _ = load_transformer(path, dtype=torch.float32, family="5b", weight_dtype=torch.int8)
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == 16  # and the adaLN linears
    assert compare_outputs(ref, int8, 3, 8, 12, relative=True) <= FP8_REL


def test_e5m2_marker(tmp_path: Path) -> None:
    """ComfyUI reads the fp8 dtype from the marker's dtype (float32 markers mean e4m3fn)."""
    sd = state(random_transformer("2b", small_sample=False))
    stored, _ = comfy_scaled_fp8(sd)
    for marker_dtype, want in ((torch.float8_e5m2, torch.float8_e5m2), (torch.float32, torch.float8_e4m3fn)):
        stored["model.diffusion_model.scaled_fp8"] = torch.empty(2, dtype=marker_dtype)
        path = save(stored, tmp_path / f"{marker_dtype}.safetensors")
        assert scaled_fp8_dtype(locate(path)["transformer"]) == want


@pytest.mark.skipif(not supports_fp8_compute("cuda"), reason="needs a GPU with fp8 tensor cores")
def test_fp8_matmul_takes_the_scale(scaled) -> None:
    """On fp8 tensor cores the scale is the weight's ``scale_b``: close to the cast path."""
    _, _, path = scaled
    fast, _ = load_transformer(path, dtype=torch.bfloat16, device="cuda", family="5b", weight_dtype=torch.float8_e4m3fn)
    cast, _ = load_transformer(path, dtype=torch.bfloat16, device="cuda", family="5b", weight_dtype=torch.float8_e4m3fn,
                               fp8_compute=False)
    layer = fast.transformer_blocks[0].ff.net[2]
    x = torch.randn(4, 64, layer.in_features, device="cuda", dtype=torch.bfloat16)
    assert layer._fp8_matmul(x) and not cast.transformer_blocks[0].ff.net[2]._fp8_matmul(x)
    want = cast.transformer_blocks[0].ff.net[2](x).float()
    assert ((layer(x).float() - want).abs().max() / want.abs().max()).item() < 0.1


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_header_marker_only(tmp_path: Path) -> None:
    """Detection reads no tensor: the marker is found in a header-only file's index."""
    sd = state(random_transformer("2b", small_sample=False))
    stored, _ = comfy_scaled_fp8(sd)
    path = save(stored, tmp_path / "m.safetensors")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert header["model.diffusion_model.scaled_fp8"]["dtype"] == "F8_E4M3"


def test_patch_hooks_round_trip(scaled) -> None:
    """ComfyUI's LoRA hooks on a kept layer: stored -> real (x scale) -> stored gives the file's
    fp8 bytes back; an out-of-range update saturates at fp8's maximum instead of becoming NaN."""
    _, _, path = scaled
    model, _ = load_transformer(path, dtype=torch.float32, family="5b", weight_dtype=torch.float8_e4m3fn)
    layer = model.transformer_blocks[0].attn1.to_q
    real = layer.convert_weight(layer.stored_weight(torch.float32, torch.device("cpu")))
    torch.testing.assert_close(real, layer.dequantize(torch.float32, "cpu"))
    back = layer.set_weight(real, return_weight=True)
    assert torch.equal(back.view(torch.uint8), layer.weight.view(torch.uint8))
    huge = layer.set_weight(real * 1e6, return_weight=True).float()
    assert not huge.isnan().any() and huge.abs().max() == 448
