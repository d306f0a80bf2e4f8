"""GGUF files (ComfyUI-GGUF's format): our torch dequantizers, the tensor table, loading tiny
transformers written with the ``gguf`` package's own writer, ``info``, broken files.

Tolerances, derived:

- Dequantizers: the same float32 products in the same order as ``gguf.quants.dequantize`` (the
  package's numpy reference), so the results are compared bit for bit.
- Quantize -> dequantize: codes are rounded to nearest on a grid of step ``s`` per block (Q8_0:
  ``absmax / 127``; Q4_0: ``absmax / 8``, where a value at ``+absmax`` on the far side of the
  signed maximum clips to ``7d``: a full step), so within ``s / 2`` (Q4_0: ``s``) of the input;
  the file then stores ``d`` as fp16, which moves each value by ``|q| * |d_fp16 - d|`` more
  (``|q| <= 127``, resp. 8).
- Whole model: against the same diffusers model holding the *reference-dequantized* weights, the
  only difference is float32 arithmetic (``TOL``). Against the fp32 model: each quantized weight
  moves by its rounding error, at most about half its block's step ``s`` and spread uniformly
  within it (rms ``s / sqrt(12)``). Moving every one of those weights by exactly ``+-s/2``
  (random signs) is an envelope with sqrt(3) times that rms; to first order the output error is
  linear in the weight errors and sums many independent terms, so it scales with their rms: the
  quantized model's error is expected at about 1/sqrt(3) = 0.58 of the envelope's output change,
  measured on the same inputs. Asserted: at most ``ENVELOPE`` = 1.5 times it (margin for the
  few clipped Q4_0 values and for the randomness of a tiny model), and the measured ratio logged.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import pytest
import torch

from cogvideox_core.errors import WeightsError
from cogvideox_core.gguf_quants import QUANT_TYPES, dequantize, quantized_nbytes
from cogvideox_core.loading.gguf_file import GGUFLinear
from cogvideox_core.loading.gguf_index import describe_gguf, read_gguf_index
from cogvideox_core.loading.weights import inspect_path, load_transformer, model_bytes
from scaffold import TEXT_DIM, tiny_config
from scaffold import random_transformer as diffusers_transformer
from test_weights import diffusers_output
from weights_util import comfyui_key, state

logger = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType
TYPES = ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0"]
TOL = 1e-5
ENVELOPE = 1.5
# Where each type keeps its fp16 scales (d, and dmin for the affine K-quants), byte offsets.
_F16_AT = {"Q8_0": (0,), "Q4_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


# ---- the dequantizers -------------------------------------------------------------------------

def random_blocks(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` valid blocks of type ``name``: random bytes (every packed code and 6-bit scale
    pattern occurs) with finite fp16 scales, as uint8 [n, bytes per block]."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, QUANT_TYPES[name].nbytes), dtype=np.uint8)
    for at in _F16_AT[name]:
        scales = (rng.standard_normal(n) * 0.05).astype(np.float16)
        raw[:, at:at + 2] = scales.view(np.uint8).reshape(n, 2)
    return raw


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_equals_the_gguf_reference_bit_for_bit(name: str) -> None:
    raw = random_blocks(name, 64)
    ref = gguf.quants.dequantize(raw, getattr(Q, name))  # [64, block]
    got = dequantize(torch.from_numpy(raw), name, ref.shape)
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy(), ref)
    half = dequantize(torch.from_numpy(raw), name, ref.shape, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, torch.from_numpy(ref).to(torch.bfloat16))


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0"])  # the package quantizes only these of the five
def test_quantize_then_dequantize_is_within_the_step(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(16, 256, generator=g) * torch.logspace(-3, 1, 16)[:, None]).numpy()
    raw = gguf.quants.quantize(w, getattr(Q, name))
    assert raw.shape == (16, quantized_nbytes(name, (256,)))
    back = dequantize(torch.from_numpy(raw), name, w.shape).numpy()
    stored = raw.reshape(-1, QUANT_TYPES[name].nbytes)[:, :2].copy().view(np.float16).astype(np.float32)
    amax = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True)
    exact = amax / (127 if name == "Q8_0" else 8)  # the step the codes were rounded on (float32)
    qmax, half = (127, 0.5) if name == "Q8_0" else (8, 1.0)  # Q4_0: the far side clips a full step
    bound = np.abs(stored) * half + qmax * np.abs(np.abs(stored) - exact)  # + the fp16 rounding of d
    err = np.abs(back - w).reshape(-1, 32)
    assert (err <= bound * (1 + 2**-20) + 1e-12).all()


@pytest.mark.parametrize("name", ["Q6_K", "Q5_K", "Q4_K"])
def test_k_quants_decode_their_codes_exactly(name: str) -> None:
    """The package cannot quantize K-quants, so blocks are built directly: every code at its
    extreme, and the result compared with the layout's formula worked out here."""
    raw = random_blocks(name, 8, seed=1)
    got = dequantize(torch.from_numpy(raw), name, (8, 256)).numpy()
    assert np.array_equal(got, _k_formula(name, raw))


def _k_formula(name: str, raw: np.ndarray) -> np.ndarray:
    """llama.cpp's ``dequantize_row_q*_K`` loops, value by value (slow, obvious)."""
    out = np.zeros((raw.shape[0], 256), np.float32)
    for b, blk in enumerate(raw):
        if name == "Q6_K":
            d = np.float32(blk[208:210].view(np.float16)[0])
            sc = blk[192:208].view(np.int8)
            for i in range(256):
                half, g, lane = i // 128, (i % 128) // 32, i % 32
                ql = blk[64 * half + lane + 32 * (g % 2)]
                low = (ql >> 4) if g >= 2 else (ql & 15)
                high = (blk[128 + 32 * half + lane] >> (2 * g)) & 3
                out[b, i] = d * np.float32(sc[i // 16]) * np.float32(int(low | (high << 4)) - 32)
            continue
        d, dmin = (np.float32(blk[o:o + 2].view(np.float16)[0]) for o in (0, 2))
        s = blk[4:16].astype(np.int32)
        qs = blk[48:176] if name == "Q5_K" else blk[16:144]
        for j in range(8):
            sc = (s[j] & 63) if j < 4 else (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)
            m = (s[j + 4] & 63) if j < 4 else (s[j + 4] >> 4) | ((s[j] >> 6) << 4)
            for lane in range(32):
                byte = qs[32 * (j // 2) + lane]
                q = int((byte >> 4) if j % 2 else (byte & 15))
                if name == "Q5_K":
                    q |= ((int(blk[16 + lane]) >> j) & 1) << 4
                out[b, 32 * j + lane] = (d * np.float32(sc)) * np.float32(q) - dmin * np.float32(m)
    return out


def test_dequantize_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match=r"'Q2_K' is not supported: one of Q8_0"):
        dequantize(torch.zeros(84, dtype=torch.uint8), "Q2_K", (256,))
    with pytest.raises(ValueError, match=r"expected 34 uint8 bytes, got 33"):
        dequantize(torch.zeros(33, dtype=torch.uint8), "Q8_0", (32,))
    with pytest.raises(ValueError, match=r"not a multiple of the 256-value blocks of Q4_K"):
        quantized_nbytes("Q4_K", (3, 32))


# ---- tiny transformers as .gguf ---------------------------------------------------------------

def block_type(qtype: str) -> Callable[[str, torch.Tensor], str]:
    """The converters' rule: 2-D weights whose rows fill whole blocks take ``qtype``, the rest
    (norms, biases, narrow layers) F32."""
    block = QUANT_TYPES[qtype].block

    def pick(key: str, t: torch.Tensor) -> str:
        return qtype if t.dim() == 2 and key.endswith("weight") and t.shape[1] % block == 0 else "F32"
    return pick


def write_gguf(path: Path, sd: dict[str, torch.Tensor], type_for: Callable[[str, torch.Tensor], str],
               arch: str = "cogvideox") -> Path:
    """``sd`` as a GGUF file through the package's own writer (what ComfyUI-GGUF's convert
    tools call); K-quant tensors are given as blocks made from the values by :func:`k_blocks`."""
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, t in sd.items():
        name = type_for(key, t)
        data = t.detach().float().numpy()
        raw = k_blocks(data, name) if name in ("Q6_K", "Q5_K", "Q4_K") else gguf.quants.quantize(data, getattr(Q, name))
        writer.add_tensor(key, raw, raw_dtype=getattr(Q, name))
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def k_blocks(w: np.ndarray, name: str) -> np.ndarray:
    """A simple K-quant encoder (the package has none): Q6_K symmetric, Q4_K/Q5_K affine with
    per-sub-block 6-bit scales/mins; not llama.cpp's search, but valid blocks near ``w``."""
    rows = w.reshape(-1, 256).astype(np.float32)
    return np.stack([_k_block(r, name) for r in rows]).reshape(*w.shape[:-1], -1)


def _k_block(x: np.ndarray, name: str) -> np.ndarray:
    if name == "Q6_K":
        sub = x.reshape(16, 16)
        amax = np.abs(sub).max(axis=1)
        d = np.float16(max(amax.max(), 1e-8) / 32 / 127)
        sc = np.clip(np.round(amax / 32 / np.float32(d)), 1, 127).astype(np.int8)
        q = np.clip(np.round(sub / (np.float32(d) * sc[:, None])) + 32, 0, 63).astype(np.uint8).reshape(256)
        ql, qh = np.zeros(128, np.uint8), np.zeros(64, np.uint8)
        for i in range(256):
            half, g, lane = i // 128, (i % 128) // 32, i % 32
            at = 64 * half + lane + 32 * (g % 2)
            ql[at] |= (q[i] & 15) << (4 if g >= 2 else 0)
            qh[32 * half + lane] |= (q[i] >> 4) << (2 * g)
        return np.concatenate([ql, qh, sc.view(np.uint8), np.array([d]).view(np.uint8)])
    levels = 31 if name == "Q5_K" else 15
    sub = x.reshape(8, 32)
    lo = np.minimum(sub.min(axis=1), 0)
    span = np.maximum(sub.max(axis=1) - lo, 1e-8)
    d, dmin = np.float16(span.max() / levels / 63), np.float16(max(-lo.min(), 1e-8) / 63)
    sc = np.clip(np.round(span / levels / np.float32(d)), 1, 63).astype(np.uint8)
    m = np.clip(np.round(-lo / np.float32(dmin)), 0, 63).astype(np.uint8)
    step, off = np.float32(d) * sc, np.float32(dmin) * m
    q = np.clip(np.round((sub + off[:, None]) / step[:, None]), 0, levels).astype(np.uint8)
    s = np.zeros(12, np.uint8)
    s[0:4], s[4:8] = sc[:4] | ((sc[4:] >> 4) << 6), m[:4] | ((m[4:] >> 4) << 6)
    s[8:12] = (sc[4:] & 15) | ((m[4:] & 15) << 4)
    qs = np.zeros(128, np.uint8)
    qh = np.zeros(32, np.uint8)
    for j in range(8):
        qs[32 * (j // 2):32 * (j // 2) + 32] |= (q[j] & 15) << (4 if j % 2 else 0)
        qh |= ((q[j] >> 4) & 1) << j
    head = np.array([d, dmin]).view(np.uint8)
    return np.concatenate([head, s, qh, qs] if name == "Q5_K" else [head, s, qs])


def steps(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Per quantized tensor of the file at ``path``: its reference-dequantized values and each
    value's grid step ``s`` (the scale of its block or sub-block), as the envelope wants."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        name = t.tensor_type.name
        if name in ("F32", "F16", "BF16"):
            continue
        shape = sd[t.name].shape
        back = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).copy())
        out[t.name] = (back, _steps(np.asarray(t.data), name).reshape(shape))
    return out


def _steps(raw: np.ndarray, name: str) -> torch.Tensor:
    qt = QUANT_TYPES[name]
    blocks = raw.reshape(-1, qt.nbytes)
    d = np.abs(blocks[:, :2].copy().view(np.float16).astype(np.float32)) if name != "Q6_K" else \
        np.abs(blocks[:, 208:210].copy().view(np.float16).astype(np.float32))
    if name in ("Q8_0", "Q4_0"):
        return torch.from_numpy(np.repeat(d, 32, axis=1))
    if name == "Q6_K":
        sc = np.abs(blocks[:, 192:208].view(np.int8).astype(np.float32))
        return torch.from_numpy(np.repeat(d * sc, 16, axis=1))
    s = blocks[:, 4:16].astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    return torch.from_numpy(np.repeat(d * sc.astype(np.float32), 32, axis=1))


def outputs(ref: torch.nn.Module, frames: int = 3) -> torch.Tensor:
    """diffusers' output of ``ref`` on fixed random inputs (an 8x12 latent, two timesteps)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, frames, ref.config.in_channels, 8, 12, generator=g)
    ctx = torch.randn(2, 226, TEXT_DIM, generator=g)
    return diffusers_output(ref, x, torch.tensor([999.0, 437.5]), ctx)


def ours_output(model: torch.nn.Module, ref: torch.nn.Module, frames: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, frames, ref.config.in_channels, 8, 12, generator=g)
    ctx = torch.randn(2, 226, TEXT_DIM, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([999.0, 437.5]), ctx).float()


def with_weights(ref: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    import copy
    out = copy.deepcopy(ref)
    with torch.no_grad():
        for key, value in weights.items():
            out.get_parameter(key).copy_(value)
    return out


def tiny(name: str = "2b", head_dim: int = 16, seed: int = 0, small_sample: bool = True) -> torch.nn.Module:
    """A random tiny diffusers transformer (2 heads x ``head_dim``); ``small_sample=False``: the
    family's real sample grid, which a single file implies (5B-I2V's learned table needs it)."""
    import dataclasses
    cfg = dataclasses.replace(tiny_config(name, small_sample), head_dim=head_dim)
    return diffusers_transformer(cfg, seed)


# 2 heads x 16 = inner 32 fills Q8_0/Q4_0 blocks; 2 x 128 = 256 fills the K-quants' blocks.
MODEL_CASES = [("Q8_0", 16), ("Q4_0", 16), ("Q4_K", 128), ("Q5_K", 128), ("Q6_K", 128)]


@pytest.mark.parametrize("qtype,head_dim", MODEL_CASES)
def test_gguf_transformer_matches_fp32_within_the_step(tmp_path: Path, qtype: str, head_dim: int) -> None:
    ref = tiny(head_dim=head_dim)
    sd = state(ref)
    path = write_gguf(tmp_path / f"tiny-{qtype}.gguf", sd, block_type(qtype))
    model, family = load_transformer(path, dtype=torch.float32, family="2b")
    assert family.name == "2b"
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, GGUFLinear)}
    assert quantized and {m.qtype for m in quantized.values()} == {qtype}
    assert all(m.weight.dtype == torch.uint8 for m in quantized.values())
    assert all(n.startswith("transformer_blocks.") for n in quantized)  # the rest: dequantized at load

    deq = steps(sd, path)
    exact = outputs(with_weights(ref, {k: v for k, (v, _) in deq.items()}))
    got = ours_output(model, ref)
    assert (got - exact).abs().max().item() <= TOL * max(1.0, exact.abs().max().item())

    g = torch.Generator().manual_seed(7)
    signs = {k: torch.randint(0, 2, s.shape, generator=g).float() * 2 - 1 for k, (_, s) in deq.items()}
    envelope = outputs(with_weights(ref, {k: sd[k] + signs[k] * s / 2 for k, (_, s) in deq.items()}))
    fp32 = outputs(ref)
    err, env = (got - fp32).abs().max().item(), (envelope - fp32).abs().max().item()
    logger.info("%s: max |quantized - fp32| %.3g, +-step/2 envelope %.3g, ratio %.2f", qtype, err, env, err / env)
    assert 0 < err <= ENVELOPE * env


def test_quantized_storage_is_what_the_model_holds(tmp_path: Path) -> None:
    ref = tiny()
    sd = state(ref)
    plain, _ = load_transformer(write_gguf(tmp_path / "f32.gguf", sd, lambda k, t: "F32"),
                                dtype=torch.float32, family="2b")
    q4, _ = load_transformer(write_gguf(tmp_path / "q4.gguf", sd, block_type("Q4_0")),
                             dtype=torch.float32, family="2b")
    assert not any(isinstance(m, GGUFLinear) for m in plain.modules())
    rule = block_type("Q4_0")
    block = sum(t.numel() for k, t in sd.items() if k.startswith("transformer_blocks.") and rule(k, t) == "Q4_0")
    saved = block * 4 - block * 18 // 32  # fp32 bytes of the block linears minus their Q4_0 bytes
    assert model_bytes(plain) - model_bytes(q4) == saved
    layer = q4.transformer_blocks[0].attn1.to_q
    moved = layer.to(torch.float64)  # a float cast leaves the blocks alone
    assert moved.weight.dtype == torch.uint8 and moved.weight.shape == (32, 18)


def test_f16_and_bf16_tensors_load_as_ordinary_weights(tmp_path: Path) -> None:
    ref = tiny()
    sd = state(ref)
    path = write_gguf(tmp_path / "half.gguf", sd, lambda k, t: "BF16" if t.dim() == 2 else "F16")
    model, _ = load_transformer(path, dtype=torch.float32, family="2b")
    want = {k: v.to(torch.bfloat16 if v.dim() == 2 else torch.float16).float() for k, v in sd.items()}
    torch.testing.assert_close(ours_output(model, ref), outputs(with_weights(ref, want)), rtol=TOL, atol=TOL)


def test_comfyui_key_layout_with_prefix(tmp_path: Path) -> None:
    ref = tiny()
    sd = {"model.diffusion_model." + comfyui_key(k): v for k, v in state(ref).items()}
    path = write_gguf(tmp_path / "comfy.gguf", sd, block_type("Q8_0"))
    model, _ = load_transformer(path, dtype=torch.float32, family="2b")
    assert isinstance(model.transformer_blocks[1].ff.net[2], GGUFLinear)
    info = inspect_path(path)
    assert info.components["transformer"].found.layout == "comfyui"


def test_info_shows_the_quantization(tmp_path: Path) -> None:
    sd = state(tiny())
    path = write_gguf(tmp_path / "tiny.gguf", sd, block_type("Q4_0"))
    n_q = sum(1 for k, t in sd.items() if block_type("Q4_0")(k, t) == "Q4_0")
    index = read_gguf_index(path)
    assert describe_gguf(index) == f"GGUF Q4_0 ({n_q} tensors), F32 ({len(sd) - n_q})"
    assert index["proj_out.weight"].shape == tuple(sd["proj_out.weight"].shape)  # torch order
    run = subprocess.run([sys.executable, "-m", "cogvideox_core", "info", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"GGUF Q4_0 ({n_q} tensors), F32 ({len(sd) - n_q})" in run.stdout
    assert "family: 2b" in run.stdout or "family: 5b" in run.stdout


def test_corrupt_or_truncated_gguf_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", state(tiny()), block_type("Q8_0"))
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    for bad in (cut, junk):
        with pytest.raises(WeightsError) as e:
            load_transformer(bad, dtype=torch.float32, family="2b")
        msg = str(e.value)
        assert str(bad) in msg and "\n" not in msg, msg
    run = subprocess.run([sys.executable, "-m", "cogvideox_core", "info", str(cut)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and str(cut) in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_unsupported_types_are_refused_by_name(tmp_path: Path) -> None:
    sd = state(tiny())
    path = write_gguf(tmp_path / "q5_0.gguf", sd,
                      lambda k, t: "Q5_0" if t.dim() == 2 and t.shape[1] % 32 == 0 else "F32")
    with pytest.raises(WeightsError, match=r"q5_0\.gguf: tensor '.+' is stored as Q5_0, which this pack cannot read"):
        load_transformer(path, dtype=torch.float32, family="2b")



def test_generate_from_a_gguf_transformer(tmp_path: Path) -> None:
    """``generate --model file.gguf --vae ... --text-encoder ...``: an all-F32 GGUF gives the
    frames of the same tensors as a single ``.safetensors`` file, bit for bit (a single file
    cannot carry the tiny sample grid a tree's config.json gives); a Q8_0 one runs, close."""
    from pipeline_models import save_tree
    from safetensors.torch import load_file, save_file
    from cogvideox_core.cli.main import main

    root = tmp_path / "tiny-5b"
    save_tree("5b", root)
    sd = load_file(str(next((root / "transformer").glob("*.safetensors"))))
    args = ["--prompt", "a lighthouse", "--frames", "9", "--height", "32", "--width", "48", "--steps", "2",
            "--seed", "3", "--device", "cpu", "--sampler", "ddim"]
    parts = ["--vae", str(root), "--text-encoder", str(root), "--family", "5b"]
    outs = {}
    save_file(sd, str(root / "transformer-single.safetensors"))
    for name, rule in (("single", None), ("F32", lambda k, t: "F32"), ("Q8_0", block_type("Q8_0"))):
        model = root / "transformer-single.safetensors" if rule is None else \
            write_gguf(root / f"transformer-{name}.gguf", sd, rule)
        out = tmp_path / f"{name}.safetensors"
        assert main(["generate", "--model", str(model), *args, *parts, "--out", str(out)]) == 0
        outs[name] = load_file(str(out))["frames"]
    assert torch.equal(outs["F32"], outs["single"])
    assert outs["Q8_0"].shape == outs["single"].shape == (9, 32, 48, 3)
    assert 0 < (outs["Q8_0"] - outs["single"]).abs().max() < 0.1  # frames in 0..1; Q8_0 moves them little


def test_layer_dequantizes_on_call_and_for_comfyui_patches(tmp_path: Path) -> None:
    """``forward`` equals ``F.linear`` with the reference-dequantized weight, in the input's
    dtype; ``convert_weight`` (ComfyUI's patch hook, given the bytes cast to float32, or the
    dequantized weight in a per-call patch) gives that weight; ``set_weight`` hands a per-call
    patched weight back and refuses, by name, to merge one into the blocks."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(64, 256, generator=g), torch.randn(64, generator=g)
    raw = gguf.quants.quantize(w.numpy(), Q.Q8_0)
    layer = GGUFLinear(256, 64, device="meta", dtype=torch.float32, qtype="Q8_0")
    layer.load_state_dict({"weight": torch.from_numpy(raw), "bias": b}, assign=True)
    real = torch.from_numpy(gguf.quants.dequantize(raw, Q.Q8_0))
    x = torch.randn(3, 256, generator=g)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, real, b), rtol=1e-6, atol=1e-6)
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert torch.equal(layer.convert_weight(layer.weight.float()), real)
    assert torch.equal(layer.convert_weight(real), real)
    assert torch.equal(layer.set_weight(real + 1, return_weight=True), real + 1)
    with pytest.raises(ValueError, match=r"GGUFLinear \(Q8_0\): a patch merged into GGUF quantized blocks"):
        layer.set_weight(real)
    assert torch.equal(layer.weight, torch.from_numpy(raw))


def test_quantized_tensors_outside_the_blocks_are_dequantized_at_load(tmp_path: Path) -> None:
    """5B-I2V's learned position table [1, N, D] and the embedding/output linears quantized
    too (the converters quantize every large tensor whose rows fill blocks): read once into
    ordinary weights equal to the reference dequantization."""
    sd = state(tiny("5b-i2v", small_sample=False))
    rule = lambda k, t: "Q8_0" if t.dim() >= 2 and t.shape[-1] % 32 == 0 else "F32"  # noqa: E731
    path = write_gguf(tmp_path / "i2v.gguf", sd, rule)
    model, family = load_transformer(path, dtype=torch.float32, family="5b-i2v")
    assert family.name == "5b-i2v"
    got = model.state_dict()
    deq = steps(sd, path)
    assert "patch_embed.pos_embedding" in deq and "proj_out.weight" in deq
    for key in ("patch_embed.pos_embedding", "proj_out.weight", "time_embedding.linear_1.weight"):
        if key in deq:
            assert got[key].dtype == torch.float32 and torch.equal(got[key], deq[key][0]), key


@pytest.mark.parametrize("weight_dtype", [torch.int8, torch.float8_e4m3fn])
def test_other_storage_choices_still_load_a_gguf(tmp_path: Path, weight_dtype: torch.dtype) -> None:
    """int8 storage re-quantizes the (dequantized) GGUF block weights; fp8 storage leaves the
    GGUF layers as they are and stores the unquantized block weights in fp8."""
    ref = tiny()
    path = write_gguf(tmp_path / "q8.gguf", state(ref), block_type("Q8_0"))
    model, _ = load_transformer(path, dtype=torch.float32, family="2b", weight_dtype=weight_dtype)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("Int8Linear" in kinds) == (weight_dtype == torch.int8)
    assert ("GGUFLinear" in kinds) == (weight_dtype != torch.int8)
    fp32 = outputs(ref)
    assert (ours_output(model, ref) - fp32).abs().max() <= 0.05 * fp32.abs().max()


def test_a_gguf_of_another_model_is_named_as_such(tmp_path: Path) -> None:
    sd = {"double_blocks.0.img_attn.proj.weight": torch.randn(32, 32), "img_in.weight": torch.randn(32, 64)}
    path = write_gguf(tmp_path / "flux.gguf", sd, block_type("Q8_0"), arch="flux")
    with pytest.raises(WeightsError, match=r"flux\.gguf: not a CogVideoX transformer: .*Flux/HunyuanVideo"):
        load_transformer(path)
