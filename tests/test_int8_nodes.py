"""int8 storage through the node path (Model Loader -> LoRA -> Sampler) on the stand-in host.

``node_host``'s patcher merges LoRAs the way ComfyUI's ``ModelPatcher.patch_weight_to_device``
does, through the layer's ``convert_weight`` / ``set_weight`` hooks, so a LoRA on an int8 model
lands on the real weight and is re-quantized with the layer's scale: within half a step
(``scale / 2`` per element, see tests/test_int8.py) of the LoRA merged into the dequantized
weight, where the merged value stays inside the row's range.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from make_workflows import load_pack
from tiny_models import write_models

PACK = load_pack()
import node_host  # noqa: E402
from node_host import sample_tiny as _sample, lora_delta, node  # noqa: E402
from cogvideox_pack.cogvideox_core.quant import INT8_MAX, Int8Linear  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402

KEY = "transformer_blocks.1.attn1.to_v.weight"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("int8_nodes") / "models")


@pytest.fixture(scope="module", autouse=True)
def stand_in(models_dir: Path) -> Iterator[None]:
    with node_host.stand_in(host, models_dir):
        yield


def test_model_loader_int8_samples_close_to_fp32() -> None:
    int8, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "int8", "sdpa")
    layer = int8.model.get_submodule(KEY[: -len(".weight")])
    assert isinstance(layer, Int8Linear) and layer.weight.dtype == torch.int8
    assert int8.dtype == torch.float32 and int8.model.proj_out.weight.dtype == torch.float32
    fp32, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "fp32", "sdpa")
    t5, = node("CogVideoXT5Loader")("CogVideoX-2b", "fp32")
    cond, = node("CogVideoXTextEncode")(t5, "a panda", "")
    got, want = _sample(int8, cond), _sample(fp32, cond)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert ((got - want).abs().max() / want.abs().max()).item() < 0.02  # int8's ~0.1% per layer, 2 steps


def test_lora_on_int8_goes_through_the_quantized_hooks() -> None:
    int8, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "int8", "sdpa")
    layer = int8.model.get_submodule(KEY[: -len(".weight")])
    codes, real = layer.weight.data.clone(), layer.dequantize(torch.float32, "cpu")
    patched, = node("CogVideoXLoraLoader")(int8, "tiny_peft.safetensors", 0.7)
    host.load(host.runtime(patched.patcher), patched.patcher)
    assert layer.weight.dtype == torch.int8
    (strength, patch), = patched.patcher.patches[KEY]
    want = real + strength * lora_delta(patch, real)
    inside = want.abs() <= INT8_MAX * layer.weight_scale[:, None]
    got = layer.dequantize(torch.float32, "cpu")
    assert not torch.equal(layer.weight, codes)
    assert bool(((got - want).abs() <= layer.weight_scale[:, None] / 2 + 1e-6)[inside].all())
    host.load(host.runtime(int8.patcher), int8.patcher)  # the input model: its codes back
    assert torch.equal(layer.weight, codes)


def test_model_loader_keeps_a_scaled_fp8_file_in_fp8(models_dir: Path) -> None:
    """A ComfyUI scaled fp8 file in models/diffusion_models, loaded with weight_dtype
    fp8_e4m3fn: its fp8 bytes and scales kept (``ScaledFP8Linear``); auto dequantizes it."""
    from safetensors.torch import load_file, save_file

    from cogvideox_pack.cogvideox_core.quant import ScaledFP8Linear
    from test_scaled_fp8 import comfy_scaled_fp8

    plain = load_file(str(models_dir / "diffusion_models" / "cogvideox_2b_tiny.safetensors"))  # diffusers keys
    stored, _expected = comfy_scaled_fp8(plain)
    save_file(stored, str(models_dir / "diffusion_models" / "cogvideox_2b_tiny_scaled.safetensors"))
    kept, _fps = node("CogVideoXModelLoader")("cogvideox_2b_tiny_scaled.safetensors", "fp8_e4m3fn", "sdpa")
    layer = kept.model.get_submodule(KEY[: -len(".weight")])
    assert isinstance(layer, ScaledFP8Linear) and layer.weight.dtype == torch.float8_e4m3fn
    auto, _fps = node("CogVideoXModelLoader")("cogvideox_2b_tiny_scaled.safetensors", "auto", "sdpa")
    assert auto.model.get_parameter(KEY).dtype == torch.float32
    t5, = node("CogVideoXT5Loader")("CogVideoX-2b", "fp32")
    cond, = node("CogVideoXTextEncode")(t5, "a panda", "")
    torch.testing.assert_close(_sample(kept, cond), _sample(auto, cond), rtol=1e-4, atol=1e-4)


def test_lora_on_int8_refused_where_the_host_cannot_patch_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ComfyUI without ``get_key_weight`` (before late 2024) would add the LoRA to the int8
    codes: the LoRA node says so instead."""
    int8, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "int8", "sdpa")
    monkeypatch.setattr(host, "patches_quantized_weights", lambda: False)
    with pytest.raises(ValueError, match=r"lora='tiny_peft.safetensors'.*quantized \(int8\) layers.*update ComfyUI"):
        node("CogVideoXLoraLoader")(int8, "tiny_peft.safetensors", 1.0)
    fp32, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "fp32", "sdpa")
    assert node("CogVideoXLoraLoader")(fp32, "tiny_peft.safetensors", 1.0)[0].loras  # unquantized: fine
