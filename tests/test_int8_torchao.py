"""Int8Linear on torchao's int8 weight-only linear (installed in CI: .ci/requirements-test.txt)
against the pack's own path, which ``COGVIDEOX_INT8_KERNEL=pack`` forces.

Both run the same arithmetic on the same storage: a float matmul of the int8 codes (exact in
bf16 and fp32, |code| <= 127), the per-row scale applied to the output, the bias added. torchao's
``Int8Tensor`` reshapes the input to 2-D and calls ``torch.mm``; the pack calls ``F.linear``. So
they can differ only by the matmul's summation order:

- fp32: a K-term dot product summed in another order moves by at most about ``K * 2^-24`` of
  ``sum_j |x_j w_j|``; with K <= 128 here and ``sum |x w|`` a few times ``|y|max`` (random
  signs), that is under 1e-5 of the output's max abs: ``FP32_REL``. The tiny transformer
  (2 blocks, residual paths: layer differences add up, they are not amplified) is held to the
  same 1e-5 of its output's max abs.
- bf16: the pack and torchao each round the matmul and the scaled output to bf16 (2^-8
  relative). A different summation order can flip one rounding per step: up to two bf16 ulps,
  ``BF16_REL`` = 2^-7 of the output's max abs, for one layer; through the model these flips
  propagate like the bf16 rounding itself, so the model is held to the bound tests/test_int8.py
  uses for bf16 against fp32 (``BF16_MODEL_REL`` = 5%) -- a loose check that torchao's path is
  the same computation, not a precision claim.

Measured with torch 2.13 (CPU) and torchao 0.18.0: 0 in every case (torchao's linear is the pack's
arithmetic, :mod:`cogvideox_core.quant`); the bounds above are what the tests may rely on. Each
test also counts the layers that ran torchao's path, so a test cannot pass on the fallback.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchao  # noqa: F401  (a test dependency: a missing install fails here, it does not skip)

from cogvideox_core import quant
from cogvideox_core.loading.weights import load_transformer
from cogvideox_core.quant import INT8_KERNEL_ENV, Int8Linear, int8_path, quantize_int8
from weights_util import random_transformer, TEXT_DIM

logger = logging.getLogger(__name__)
FP32_REL = 1e-5
BF16_REL = 2**-7
BF16_MODEL_REL = 0.05
CPU = torch.device("cpu")


def int8_layer(out_features: int, in_features: int, seed: int) -> Int8Linear:
    g = torch.Generator().manual_seed(seed)
    layer = Int8Linear(in_features, out_features, True, device="meta", dtype=torch.float32)
    codes, scale = quantize_int8(torch.randn(out_features, in_features, generator=g))
    layer.load_state_dict({"weight": codes, "weight_scale": scale, "bias": torch.randn(out_features, generator=g)},
                          assign=True)
    return layer


class CountTorchao:
    """Counts the calls of Int8Linear's torchao path (to know which path ran)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls, original = 0, Int8Linear._torchao_linear

        def counted(layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return original(layer, x)
        monkeypatch.setattr(Int8Linear, "_torchao_linear", counted)


def both_paths(run, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(torchao's output, the pack's output, torchao calls in the first run)."""
    count = CountTorchao(monkeypatch)
    monkeypatch.setenv(INT8_KERNEL_ENV, "auto")
    with torch.no_grad():
        torchao_out = run()
    calls = count.calls
    monkeypatch.setenv(INT8_KERNEL_ENV, "pack")
    with torch.no_grad():
        pack_out = run()
    assert count.calls == calls  # the forced fallback never reaches torchao
    return torchao_out, pack_out, calls


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_torchao_is_chosen_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INT8_KERNEL_ENV, "auto")
    assert quant.torchao_int8_tensor() is not None
    assert int8_path(CPU, torch.float32, False) == "torchao"
    assert int8_path(CPU, torch.bfloat16, False) == "torchao"
    assert int8_path(CPU, torch.float16, False) == "dequantize"  # fp16 could overflow before the scale
    assert int8_path(CPU, torch.float32, True) == "dequantize"  # LoRA patches need the weight
    assert int8_path(torch.device("mps"), torch.float32, False) == "scaled-output"  # not run there
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # dynamo fuses the pack's own cast
    assert int8_path(CPU, torch.bfloat16, False) == "scaled-output"
    monkeypatch.undo()
    monkeypatch.setenv(INT8_KERNEL_ENV, "pack")
    assert int8_path(CPU, torch.bfloat16, False) == "scaled-output"
    monkeypatch.setenv(INT8_KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match=r"COGVIDEOX_INT8_KERNEL='fast'.*auto, pack"):
        int8_path(CPU, torch.float32, False)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, FP32_REL), (torch.bfloat16, BF16_REL)])
def test_layer_torchao_equals_pack(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, tol: float) -> None:
    layer = int8_layer(48, 128, seed=0).to(dtype)
    x = torch.randn(3, 7, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    codes, scale = layer.weight.data.clone(), layer.weight_scale.data.clone()
    got, want, calls = both_paths(lambda: layer(x), monkeypatch)
    assert calls == 1 and got.dtype == want.dtype == dtype and got.shape == (3, 7, 48)
    assert rel_diff(got, want) <= tol  # same arithmetic, another summation order (module docstring)
    assert layer.weight.dtype == torch.int8 and torch.equal(layer.weight, codes)  # storage untouched
    assert torch.equal(layer.weight_scale, scale)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, FP32_REL), (torch.bfloat16, BF16_MODEL_REL)])
def test_transformer_torchao_equals_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         dtype: torch.dtype, tol: float) -> None:
    random_transformer("5b").save_pretrained(tmp_path / "t")
    model, _ = load_transformer(tmp_path / "t", dtype=dtype, weight_dtype=torch.int8)
    layers = sum(isinstance(m, Int8Linear) for m in model.modules())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, model.config.in_channels, 8, 12, generator=g).to(dtype)
    ctx = torch.randn(2, 226, TEXT_DIM, generator=g).to(dtype)
    t = torch.tensor([999.0, 437.5])
    got, want, calls = both_paths(lambda: model(x, t, ctx), monkeypatch)
    assert layers == 16 and calls == layers  # every int8 layer ran on torchao's path, once
    rel = rel_diff(got, want)
    logger.info("tiny transformer in %s: torchao vs pack, max abs diff / max abs = %.3g", dtype, rel)
    assert rel <= tol  # module docstring
