"""fp8 compute: linear layers on float8_e4m3fn weights through scaled fp8 matmuls.

Only the dispatch is testable on this CPU: the speed and the CUDA kernel need a GPU of compute
capability 8.9+ (the GPU benchmark measures them). Tested here: on the CPU the fp8 layer gives
exactly the cast path's numbers; with ``supports_fp8_compute`` faked True it quantises the input
to fp8 with a per-tensor power-of-two scale and calls ``torch._scaled_mm`` with fp8 operands, the
weight column-major, scales (input scale, 1) and the bias, and its result is x @ W.T + b within
the bound of fp8 input quantisation; it falls back to casting for e5m2 weights, fp32 inputs and
dims the kernel does not take; the loaders and the node host pick the fp8 layers only where
they can run. This torch's CPU ``_scaled_mm`` does run fp8, so the real numbers are also checked
against the dequantised reference.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cogvideox_core import ops
from cogvideox_core.loading import weights
from cogvideox_core.ops import (
    FP8_MAX,
    cast_ops,
    default_ops,
    fp8_linear,
    fp8_matmul_ops,
    quantize_fp8,
)

E4M3 = torch.float8_e4m3fn
IN, OUT = 64, 48


def linear(cls: type, weight_dtype: torch.dtype = E4M3, bias: bool = True, in_features: int = IN) -> torch.nn.Module:
    """A ``cls`` Linear with seeded weights stored as ``weight_dtype`` and a bf16 bias."""
    g = torch.Generator().manual_seed(0)
    layer = cls(in_features, OUT, bias=bias, device="meta")
    w = (torch.randn(OUT, in_features, generator=g) * 0.2).to(weight_dtype)
    state = {"weight": w} | ({"bias": torch.randn(OUT, generator=g).bfloat16()} if bias else {})
    layer.load_state_dict(state, assign=True)
    return layer.eval().requires_grad_(False)


def inputs(dtype: torch.dtype = torch.bfloat16, shape: tuple[int, ...] = (2, 5, IN)) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g) * 3
    x[..., :8] *= 1e-3  # small activations (GELU-like): below fp8's normal range at scale 1
    return x.to(dtype)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """``supports_fp8_compute`` says yes and ``torch._scaled_mm`` is a recorder computing the
    dequantised reference (a @ b in float32 times the scales, plus the bias)."""
    calls: list[dict] = []

    def scaled_mm(a, b, scale_a, scale_b, bias=None, out_dtype=None, **kw):
        calls.append({"a": a, "b": b, "scale_a": scale_a, "scale_b": scale_b, "bias": bias,
                      "out_dtype": out_dtype, "kw": kw})
        out = (a.float() @ b.float()) * scale_a * scale_b
        return (out if bias is None else out + bias.float()).to(out_dtype)

    monkeypatch.setattr(ops, "supports_fp8_compute", lambda device: True)
    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm)
    return calls


# ---- the layer ------------------------------------------------------------------------------

def test_on_the_cpu_the_fp8_layer_is_the_cast_path() -> None:
    assert not ops.supports_fp8_compute("cpu")
    fast, cast = linear(fp8_matmul_ops.Linear), linear(cast_ops.Linear)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        x = inputs(dtype)
        assert torch.equal(fast(x), cast(x))


@pytest.mark.parametrize("shape,bias", [((2, 5, IN), True), ((7, IN), True), ((3, 5, IN), False)])
def test_dispatch_calls_scaled_mm_with_fp8_operands(recorder: list[dict], shape: tuple[int, ...], bias: bool) -> None:
    layer = linear(fp8_matmul_ops.Linear, bias=bias)
    x = inputs(torch.bfloat16, shape)
    out = layer(x)
    (call,) = recorder
    rows = x.numel() // IN
    a, b = call["a"], call["b"]
    assert a.dtype == E4M3 and a.shape == (rows, IN) and a.is_contiguous()
    assert b.dtype == E4M3 and b.shape == (IN, OUT) and b.stride() == (1, IN)  # W.T, column-major
    assert torch.equal(b.t().view(torch.uint8), layer.weight.view(torch.uint8))  # the stored bytes
    amax = x.float().abs().max()
    scale = 2.0 ** torch.ceil(torch.log2(amax / FP8_MAX))  # the power of two putting amax under 448
    assert call["scale_a"].dtype == torch.float32 and call["scale_a"].item() == scale.item()
    assert call["scale_b"].dtype == torch.float32 and call["scale_b"].item() == 1.0
    assert (a.float().abs().max() * scale).item() == pytest.approx(amax.item(), rel=2**-3)  # the range is used
    assert call["out_dtype"] == torch.bfloat16 and out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], OUT)
    assert (call["bias"] is None) == (not bias)
    _within_fp8_input_bound(out, x, layer, scale.item())


def _within_fp8_input_bound(out: torch.Tensor, x: torch.Tensor, layer: torch.nn.Module, scale: float) -> None:
    """|out - (x @ W.T + b)| <= 2^-4 (|x| @ |W|.T) + 2^-10 scale sum|W| + 2^-7 |ref|: e4m3 rounds
    normal values to within half an ulp (2^-4 relative), subnormals (below 2^-6 scale) to within
    2^-10 scale, and the bf16 output adds one rounding (2^-8 relative, 2^-7 with the sum)."""
    w = layer.weight.float()
    ref = x.float() @ w.t() + (0 if layer.bias is None else layer.bias.float())
    bound = 2**-4 * (x.float().abs() @ w.abs().t()) + 2**-10 * scale * w.abs().sum(1) + 2**-7 * ref.abs()
    err = (out.float() - ref).abs()
    assert (err <= bound + 1e-6).all(), (err - bound).max()
    assert err.max() > 0  # quantised: close, not equal


@pytest.mark.parametrize("case", ["e5m2 weight", "fp32 input", "bf16 weight", "in_features not /16"])
def test_falls_back_to_the_cast_path(recorder: list[dict], case: str) -> None:
    cls = fp8_matmul_ops.Linear
    layer, cast = {
        "e5m2 weight": (linear(cls, torch.float8_e5m2), linear(cast_ops.Linear, torch.float8_e5m2)),
        "fp32 input": (linear(cls), linear(cast_ops.Linear)),
        "bf16 weight": (linear(cls, torch.bfloat16), linear(cast_ops.Linear, torch.bfloat16)),
        "in_features not /16": (linear(cls, in_features=40), linear(cast_ops.Linear, in_features=40)),
    }[case]
    x = inputs(torch.float32 if case == "fp32 input" else torch.bfloat16, (2, 5, layer.in_features))
    assert torch.equal(layer(x), cast(x)) and recorder == []


def test_quantize_fp8_scales_and_clamps() -> None:
    x = torch.tensor([[1000.0, -3.0, 1e-4, 0.0]], dtype=torch.bfloat16)
    q, scale = quantize_fp8(x)
    assert q.dtype == E4M3 and scale.item() == 4.0  # 1000 / 448 = 2.2 -> 2^2
    assert torch.isfinite(q.float()).all() and q.float().abs().max() <= FP8_MAX
    zeros, s0 = quantize_fp8(torch.zeros(2, 16, dtype=torch.float16))
    assert torch.equal(zeros.float(), torch.zeros(2, 16)) and s0.item() == 2.0**-15  # 1/scale fits fp16
    big, s1 = quantize_fp8(torch.full((1, 16), 60000.0, dtype=torch.float16))
    assert torch.isfinite(big.float()).all() and (big.float() * s1).max().item() == pytest.approx(60000, rel=2**-3)


def test_real_scaled_mm_matches_the_dequantised_reference() -> None:
    """This torch runs fp8 ``_scaled_mm`` on the CPU: the layer's numbers against the
    dequantised matmul (fp8 input times its scale, fp8 weight) in float32, one bf16 rounding."""
    x, w = inputs(), linear(cast_ops.Linear)
    try:
        out = fp8_linear(x, w.weight, w.bias)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"this torch has no CPU fp8 _scaled_mm: {e}")
    q, scale = quantize_fp8(x.reshape(-1, IN))
    ref = ((q.float() * scale) @ w.weight.float().t() + w.bias.float()).reshape(out.shape)
    torch.testing.assert_close(out.float(), ref.bfloat16().float(), rtol=2**-7, atol=1e-6)
    _within_fp8_input_bound(out, x, w, scale.item())


# ---- who picks the layers -------------------------------------------------------------------

def test_transformer_ops_picks_fp8_matmuls_only_where_they_run(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    bf16 = torch.bfloat16
    with caplog.at_level(logging.INFO, logger="cogvideox_core.loading.weights"):
        assert weights.transformer_ops(bf16, None, "cpu") is default_ops
        assert weights.transformer_ops(bf16, E4M3, "cpu") is cast_ops
        assert "has none (an NVIDIA GPU of compute capability 8.9+ has)" in caplog.text
        monkeypatch.setattr(ops, "supports_fp8_compute", lambda device: True)
        assert weights.transformer_ops(bf16, E4M3, "cuda") is fp8_matmul_ops
        assert "scaled fp8 matmuls on cuda" in caplog.text
        assert weights.transformer_ops(bf16, E4M3, "cuda", fp8_compute=False) is cast_ops
        assert "fp8 matmuls: turned off" in caplog.text
        assert weights.transformer_ops(bf16, torch.float8_e5m2, "cuda") is cast_ops
        assert weights.transformer_ops(torch.float32, E4M3, "cuda") is cast_ops


def test_a_loaded_model_runs_fp8_matmuls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny 5B loaded with fp8 weights, the device faked fp8-capable: every block matmul runs
    the real (CPU) ``_scaled_mm``; the output stays close to the cast path's."""
    from weights_util import random_transformer

    random_transformer("5b").save_pretrained(tmp_path / "t")
    cast, _ = weights.load_transformer(tmp_path / "t", torch.bfloat16, weight_dtype=E4M3, fp8_compute=False)
    monkeypatch.setattr(ops, "supports_fp8_compute", lambda device: True)
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast, _ = weights.load_transformer(tmp_path / "t", torch.bfloat16, weight_dtype=E4M3)
    assert type(fast.transformer_blocks[0].attn1.to_q) is fp8_matmul_ops.Linear
    assert type(fast.transformer_blocks[0].norm1.linear) is fp8_matmul_ops.Linear  # bf16 weight: casts
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 3, 16, 8, 12, generator=g).bfloat16(), torch.randn(1, 226, 8, generator=g).bfloat16()
    t = torch.tensor([500.0])
    with torch.no_grad():
        a, b = fast(x, t, ctx).float(), cast(x, t, ctx).float()
    assert len(calls) == 2 * 6  # 2 blocks x (q, k, v, out, ff in, ff out)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    assert 0 < rel < 0.02, rel  # fp8 inputs: about 0.5% on tiny random models like this one


def test_node_host_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node layer: the core's fp8 layers without ComfyUI; ComfyUI's ``fp8_ops`` where its
    ``pick_operations(..., fp8_optimizations=True)`` picks them; ``manual_cast`` otherwise."""
    from make_workflows import load_pack

    load_pack()
    from cogvideox_pack.cogvideox_core import ops as pack_ops
    from cogvideox_pack.nodes.host import compute

    bf16 = torch.bfloat16
    assert compute.layer_ops(True, E4M3, bf16) is pack_ops.fp8_matmul_ops
    assert compute.layer_ops(True, torch.float8_e5m2, bf16) is pack_ops.cast_ops
    assert compute.layer_ops(False) is pack_ops.default_ops
    fp8_ops, manual_cast, seen = object(), object(), []

    def pick_operations(weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False,
                        fp8_optimizations=False, scaled_fp8=None, model_config=None):
        seen.append((weight_dtype, compute_dtype, fp8_optimizations))
        return fp8_ops if fast else manual_cast

    comfy = SimpleNamespace(ops=SimpleNamespace(pick_operations=pick_operations, fp8_ops=fp8_ops,
                                                manual_cast=manual_cast, disable_weight_init=object()))
    monkeypatch.setattr(compute, "comfy", lambda: comfy)
    monkeypatch.setattr(compute, "devices", lambda role: (torch.device("cuda"), torch.device("cpu")))
    fast = True
    assert compute.layer_ops(True, E4M3, bf16) is fp8_ops and seen == [(E4M3, bf16, True)]
    assert compute.layer_ops(True, E4M3, torch.float32) is manual_cast  # fp8 matmuls need bf16/fp16
    assert compute.layer_ops(True, torch.float8_e5m2, bf16) is manual_cast
    fast = False  # a device without fp8 compute
    assert compute.layer_ops(True, E4M3, bf16) is manual_cast
    comfy.ops.pick_operations = lambda weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False: fp8_ops
    assert compute.layer_ops(True, E4M3, bf16) is manual_cast  # a ComfyUI without the switch
