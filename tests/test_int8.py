"""int8 weight-only storage: quantization error, the layer, loading, ComfyUI's patch hooks.

Tolerances, derived:

- Per element: ``quantize_int8`` rounds ``w / s`` to the nearest integer with ``s = absmax(row)
  / 127``, so ``|codes * s - w| <= s / 2`` (plus float32 rounding of the product, < 2^-24
  relative to |w| <= 127 s, so ``s / 2 * (1 + 2^-16)`` is a safe bound).
- One layer: ``y_i - y_ref_i = sum_j dW_ij x_j``, so ``|y_i - y_ref_i| <= s_i / 2 * ||x||_1``
  (plus float32 accumulation, bounded by ``K * 2^-24 * sum_j |W_ij x_j|``).
- A whole model: its output equals, to float32 rounding (``TOL``), the same model holding the
  dequantized weights ``codes * s`` (so the only change is the weights'); against the fp32
  model it differs by the propagated weight error. Each weight moves by at most 1/254 of its
  row's absmax, i.e. a relative error of the layer output of order ``1/254 * sqrt(in/3)/sqrt(in)``
  for random rows (uniform rounding error has std ``s/sqrt(12)``; a random row's absmax is a few
  std of its values): about 0.1%; through 2 blocks of 8 quantized linears (residual paths, so
  errors add rather than multiply) a few tenths of a percent (measured: 0.07%). ``MODEL_REL`` = 1% of the output's
  max abs is the bound asserted, with the measured value logged.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from cogvideox_core.loading.quantized import INT8_TRANSFORMER_KEYS
from cogvideox_core.loading.weights import load_transformer, model_bytes
from cogvideox_core import quant
from cogvideox_core.quant import INT8_MAX, Int8Linear, quantize_int8
from test_weights import compare_outputs
from weights_util import layout_state, random_transformer, save, state

TOL = 1e-5
MODEL_REL = 0.01


def test_quantize_int8_is_within_half_a_step() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) * torch.logspace(-3, 1, 64)[:, None]  # rows of many scales
    w[5] = 0.0
    codes, scale = quantize_int8(w)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (64,)
    assert int(codes.abs().max()) == INT8_MAX
    back = codes.float() * scale[:, None]
    step = scale[:, None].expand_as(w)
    assert bool(((back - w).abs() <= step / 2 * (1 + 2**-16)).all())
    assert scale[5] == 1.0 and not codes[5].any()
    rows = w.abs().argmax(dim=1)  # each row's absmax is kept up to float rounding
    torch.testing.assert_close(back.gather(1, rows[:, None]), w.gather(1, rows[:, None]), rtol=1e-6, atol=0)


def test_quantize_int8_in_chunks_equals_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are quantized a few at a time (bounded temporaries): the same result, from any
    stored dtype, the input left unchanged."""
    w = torch.randn(37, 50, generator=torch.Generator().manual_seed(3))
    whole = quantize_int8(w)
    monkeypatch.setattr(quant, "CHUNK_VALUES", 120)  # 2 rows at a time, a ragged last chunk
    kept = w.clone()
    for got, want in zip(quantize_int8(w), whole):
        assert torch.equal(got, want)
    assert torch.equal(w, kept)
    codes, scale = quantize_int8(w.bfloat16())
    assert bool(((codes.float() * scale[:, None] - w.bfloat16().float()).abs() <= scale[:, None] / 2 * 1.0001).all())


def test_forward_paths_agree() -> None:
    """bf16/fp32: the scale applied to the output (x @ codes.T * s); fp16 and LoRA-patched: the
    weight dequantized first. Both are the same product up to the compute dtype's rounding."""
    g = torch.Generator().manual_seed(4)
    layer = int8_layer(torch.randn(32, 64, generator=g), torch.randn(32, generator=g))
    x = torch.randn(6, 64, generator=g)
    want = torch.nn.functional.linear(x, layer.dequantize(torch.float32, "cpu"), layer.bias)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    for dtype in (torch.bfloat16, torch.float16):
        got = layer.to(dtype)(x.to(dtype)).float()
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.05 * want.abs().max().item())
    layer.float()  # scale and bias now rounded through fp16: compare with the same numbers
    fast = layer(x)
    layer.weight_function = [lambda w: w]  # a (no-op) LoRA patch: the dequantizing path
    torch.testing.assert_close(layer(x), fast, rtol=1e-5, atol=1e-5)


def test_quantize_int8_refuses_non_matrices() -> None:
    with pytest.raises(ValueError, match=r"shape \[4\].*2-D"):
        quantize_int8(torch.ones(4))


def int8_layer(w: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
    layer = Int8Linear(w.shape[1], w.shape[0], bias is not None, device="meta", dtype=torch.float32)
    codes, scale = quantize_int8(w)
    state = {"weight": codes, "weight_scale": scale, **({"bias": bias} if bias is not None else {})}
    layer.load_state_dict(state, assign=True)
    return layer


def test_layer_output_within_the_derived_bound() -> None:
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(48, 80, generator=g), torch.randn(48, generator=g), torch.randn(5, 7, 80, generator=g)
    layer = int8_layer(w, b)
    got, ref = layer(x), torch.nn.functional.linear(x, w, b)
    bound = layer.weight_scale / 2 * x.abs().sum(-1, keepdim=True)  # [5, 7, 1] * [48] -> [5, 7, 48]
    rounding = 80 * 2**-24 * (x.abs()[..., None, :] * w.abs()).sum(-1) + 1e-6
    assert bool(((got - ref).abs() <= bound + rounding).all())
    torch.testing.assert_close(got, torch.nn.functional.linear(x, layer.dequantize(torch.float32, "cpu"), b))
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_storage_moves_as_int8() -> None:
    """``.to()`` (what a host's memory manager does) moves the int8 codes and the scale; nothing is
    dequantized in the module's state, whatever dtype the model is moved to."""
    layer = int8_layer(torch.randn(16, 32), torch.zeros(16))
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.int8 and layer.weight_scale.dtype == torch.bfloat16
    assert {k: v.dtype for k, v in layer.state_dict().items()} == {
        "weight": torch.int8, "weight_scale": torch.bfloat16, "bias": torch.bfloat16}
    assert all(hasattr(layer, a) for a in ("comfy_cast_weights", "weight_function", "bias_function"))


def test_comfy_patch_hooks_round_trip() -> None:
    """ComfyUI's LoRA patching: stored units -> ``convert_weight`` -> + update -> ``set_weight``
    (re-quantized with the kept scale) -> forward; within half a step of the patched weight
    where the update stays inside each row's range."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(24, 40, generator=g)
    layer = int8_layer(w, None)
    delta = 0.01 * torch.randn(24, 40, generator=g)
    real = layer.convert_weight(layer.stored_weight(torch.float32, torch.device("cpu")))
    torch.testing.assert_close(real, layer.dequantize(torch.float32, "cpu"))
    patched = real + delta
    inside = patched.abs() <= INT8_MAX * layer.weight_scale[:, None]
    q = layer.set_weight(patched, return_weight=True)
    back = q.float() * layer.weight_scale[:, None]
    assert bool(((back - patched).abs() <= layer.weight_scale[:, None] / 2 + 1e-7)[inside].all())
    # the low-VRAM path: weight_function sees stored units and returns stored units
    layer.weight_function = [lambda s: layer.set_weight(layer.convert_weight(s) + delta, return_weight=True).float()]
    x = torch.randn(3, 40, generator=g)
    torch.testing.assert_close(layer(x), x @ back.T)
    layer.set_weight(patched)  # the full-load path: stored in place of the codes
    assert layer.weight.dtype == torch.int8 and torch.equal(layer.weight, q)


def dequantized_copy(ref: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """``ref`` holding ``model``'s int8 weights dequantized (codes * scale) in float32."""
    sd = state(ref)
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            sd[f"{name}.weight"] = module.dequantize(torch.float32, "cpu")
    out = copy.deepcopy(ref)
    out.load_state_dict(sd)
    return out


def test_load_transformer_int8(tmp_path: Path) -> None:
    ref = random_transformer("5b")
    ref.save_pretrained(tmp_path / "t")
    model, _ = load_transformer(tmp_path / "t", dtype=torch.float32, weight_dtype=torch.int8)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    int8 = {k for k, d in dtypes.items() if d == torch.int8}
    assert int8 == {k for k in dtypes if INT8_TRANSFORMER_KEYS.match(k)} and len(int8) == 2 * 8
    assert all(isinstance(m, Int8Linear) for n, m in model.named_modules()
               if INT8_TRANSFORMER_KEYS.match(f"{n}.weight"))
    assert model.get_parameter("norm_out.linear.weight").dtype == torch.float32
    assert all(d == torch.float32 for k, d in dtypes.items() if k not in int8)
    quantized = sum(v.numel() for k, v in state(ref).items() if k in int8)
    total = sum(v.nbytes for v in state(ref).values())
    scales = sum(model.get_parameter(k[: -len("weight")] + "weight_scale").nbytes for k in int8)
    assert model_bytes(model) == total - 3 * quantized + scales  # 4 -> 1 byte a weight, 4 a row
    assert compare_outputs(dequantized_copy(ref, model), model, 3, 8, 12) <= TOL
    rel = compare_outputs(ref, model, 3, 8, 12, relative=True)
    assert 0 < rel <= MODEL_REL, rel


@pytest.mark.parametrize("layout", ["comfyui", "sat"])
def test_int8_from_other_layouts(tmp_path: Path, layout: str) -> None:
    """SAT's fused qkv is cut, then each part quantized on its own rows: the same int8 state as
    from the diffusers folder."""
    ref = random_transformer("1.5-5b", small_sample=False)
    ref.save_pretrained(tmp_path / "t")
    path = save(layout_state(state(ref), layout, "model.diffusion_model.", True), tmp_path / "m.safetensors")
    want, _ = load_transformer(tmp_path / "t", dtype=torch.bfloat16, weight_dtype=torch.int8)
    got, _ = load_transformer(path, dtype=torch.bfloat16, weight_dtype=torch.int8)
    for key, value in want.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key


def test_int8_bf16_compute(tmp_path: Path) -> None:
    ref = random_transformer("2b")
    ref.save_pretrained(tmp_path / "t")
    model, _ = load_transformer(tmp_path / "t", dtype=torch.bfloat16, weight_dtype=torch.int8)
    assert model.transformer_blocks[0].ff.net[2].weight.dtype == torch.int8
    assert compare_outputs(ref, model, 3, 8, 12, relative=True) < 0.05  # bf16 against fp32, as test_bf16_loading
