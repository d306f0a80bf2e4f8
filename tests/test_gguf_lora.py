"""LoRA on a GGUF model through the node path (Model Loader -> LoRA -> Sampler) on the stand-in host.

The LoRA node hands a GGUF layer's update to the layer as an object patch (``lora_terms``, added
at compute as ``(x @ down.T) @ up.T``); the blocks are never touched. Oracle: the same file's
weights dequantized into the fp32 model, the same LoRAs merged into those weights by the
stand-in patcher (ComfyUI's full-load merge).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import gguf
import pytest
import torch
from safetensors.torch import load_file

from make_workflows import load_pack
from test_gguf import Q, block_type, write_gguf
from tiny_models import write_models

PACK = load_pack()
import node_host  # noqa: E402
from node_host import sample_tiny as _sample, node  # noqa: E402
from cogvideox_pack.cogvideox_core.loading.gguf_file import GGUFLinear, gguf_layers  # noqa: E402
from cogvideox_pack.cogvideox_core.loading.lora import LoraWeight  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402

GGUF = "cogvideox_2b_tiny-Q4_0.gguf"
CHAIN = [("tiny_peft.safetensors", 0.7), ("tiny_kohya.safetensors", -0.5)]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = write_models(tmp_path_factory.mktemp("gguf_lora") / "models")
    sd = load_file(str(models / "diffusion_models" / "cogvideox_2b_tiny.safetensors"))
    write_gguf(models / "diffusion_models" / GGUF, sd, block_type("Q4_0"))
    return models


@pytest.fixture(scope="module", autouse=True)
def stand_in(models_dir: Path) -> Iterator[None]:
    with node_host.stand_in(host, models_dir):
        yield


def _with_loras(model, chain: list[tuple[str, float]]):
    for lora, strength in chain:
        model, = node("CogVideoXLoraLoader")(model, lora, strength)
    return model


def _dequantized_twin(quantized):
    """The fp32 model with every weight of ``quantized`` (its GGUF layers dequantized)."""
    twin, _fps = node("CogVideoXModelLoader")("cogvideox_2b_tiny.safetensors", "fp32", "sdpa")
    state = {k: v.float() for k, v in quantized.model.state_dict().items()}
    for name in gguf_layers(quantized.model):
        state[f"{name}.weight"] = quantized.model.get_submodule(name).dequantize(torch.float32, "cpu")
    twin.model.load_state_dict(state)
    return twin


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_layer_lora_terms_equal_the_merged_update(qtype: str) -> None:
    """The core layer alone: ``lora_terms`` add the update at compute (fp32: within 1e-5 of
    the LoRA merged into the dequantized weight), the blocks untouched; cleared: exact again."""
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(64, 96, generator=g), torch.randn(64, generator=g), torch.randn(5, 96, generator=g)
    up, down = torch.randn(64, 4, generator=g) * 0.1, torch.randn(4, 96, generator=g) * 0.1
    raw = gguf.quants.quantize(w.numpy(), getattr(Q, qtype))
    layer = GGUFLinear(96, 64, device="meta", dtype=torch.float32, qtype=qtype)
    layer.load_state_dict({"weight": torch.from_numpy(raw), "bias": b}, assign=True)
    real, plain = layer.dequantize(torch.float32, "cpu"), layer(x)
    layer.lora_terms = ((0.7, LoraWeight(up, down, alpha=2.0)), (-0.3, LoraWeight(up, down)))
    merged = real + 0.7 * 0.5 * (up @ down) - 0.3 * (up @ down)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, merged, b), rtol=1e-5, atol=1e-5)
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert torch.equal(layer.weight, torch.from_numpy(raw))
    layer.lora_terms = ()
    assert torch.equal(layer(x), plain)


def test_lora_on_gguf_equals_the_lora_merged_into_the_dequantized_weights() -> None:
    gguf, _fps = node("CogVideoXModelLoader")(GGUF, "fp32", "sdpa")
    layers = [gguf.model.get_submodule(n) for n in gguf_layers(gguf.model)]
    assert layers and all(isinstance(m, GGUFLinear) and m.qtype == "Q4_0" for m in layers)
    blocks = {id(m): m.weight.data.clone() for m in layers}
    t5, = node("CogVideoXT5Loader")("CogVideoX-2b", "fp32")
    cond, = node("CogVideoXTextEncode")(t5, "a panda", "")
    plain = _sample(gguf, cond)
    twin = _dequantized_twin(gguf)
    got = _sample(_with_loras(gguf, CHAIN), cond)
    want = _sample(_with_loras(twin, CHAIN), cond)
    assert (got - plain).abs().max() > 1e-3  # the LoRAs change the output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(m.weight.data, blocks[id(m)]) and m.weight.dtype == torch.uint8 for m in layers)
    assert torch.equal(_sample(gguf, cond), plain)  # the input model: its layers' terms put back


def test_lora_node_patches_gguf_layers_as_objects_and_the_rest_as_weights() -> None:
    gguf, _fps = node("CogVideoXModelLoader")(GGUF, "fp32", "sdpa")
    patched = _with_loras(gguf, CHAIN)
    kept = set(gguf_layers(gguf.model))
    terms = {k[: -len(".lora_terms")]: v for k, v in patched.patcher.object_patches.items()}
    assert terms and set(terms) <= kept
    assert all([s for s, _w in v] == [0.7, -0.5] for v in terms.values())
    assert not {k[: -len(".weight")] for k in patched.patcher.patches} & kept
    assert gguf.patcher.object_patches == {} and patched.loras == ("tiny_peft.safetensors:0.7",
                                                                   "tiny_kohya.safetensors:-0.5")
