"""T5 prompt encoding against the diffusers CogVideoX pipelines' ``_get_t5_prompt_embeds``.

A tiny random T5 encoder (T5-v1.1 architecture: gated GELU, relative attention, vocabulary
32128) with the real T5 tokenizer (the copy shipped in the pack), saved as a diffusers
``text_encoder/`` folder and as ComfyUI-style single files (fp32, fp8, ``scaled_fp8``), loaded
by our loader. The reference is the pipeline's own method on the model as diffusers loads it
(``T5EncoderModel.from_pretrained``).
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import types
from pathlib import Path

import pytest
import torch
from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline
from transformers import T5Config, T5EncoderModel

from cogvideox_core.errors import WeightsError
from cogvideox_core.loading.text import (MAX_LENGTH, SHIPPED_TOKENIZER, T5_FP8_KEYS, load_t5_encoder, load_text_encoder,
                                 load_tokenizer, t5_config_from_shapes, tokenize, tokenizer_folder)
from weights_util import save, write_header_only

SHARED_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "t5_tokenizer"
PROMPTS = ["A panda, dressed in a small red jacket, strums a guitar in a bamboo forest.", ""]
LONG = "a very long prompt about a cat " * 60  # ~360 tokens: cut to 226
TOL = 1e-6


def tiny_t5_config() -> T5Config:
    return T5Config(vocab_size=32128, d_model=32, d_ff=48, num_layers=2, num_heads=4, d_kv=8,
                    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                    is_encoder_decoder=False, use_cache=False)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("t5") / "text_encoder"
    T5EncoderModel(tiny_t5_config()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(t5_folder: Path) -> T5EncoderModel:
    """The encoder as the diffusers pipelines load it."""
    return T5EncoderModel.from_pretrained(t5_folder).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def pipeline_embeds(model: T5EncoderModel, tokenizer, prompts: list[str]) -> torch.Tensor:
    """``CogVideoXPipeline._get_t5_prompt_embeds`` itself, on a stand-in pipeline object, under
    ``no_grad`` as the pipeline's ``__call__`` runs it (SDPA picks another CPU kernel with grad)."""
    pipe = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=model, _execution_device=torch.device("cpu"))
    with torch.no_grad():
        return CogVideoXPipeline._get_t5_prompt_embeds(pipe, prompts, max_sequence_length=MAX_LENGTH,
                                                       device=torch.device("cpu"), dtype=torch.float32)


def file_state(model: T5EncoderModel) -> dict[str, torch.Tensor]:
    """The state as ComfyUI's T5 files hold it: ``shared.weight``, no ``encoder.embed_tokens``."""
    return {k: v.clone().contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def test_shipped_tokenizer_is_the_shared_copy() -> None:
    names = sorted(p.name for p in SHIPPED_TOKENIZER.iterdir())
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    if SHARED_TOKENIZER.is_dir():  # the project's reference copy, beside the checkout
        for name in names:
            digest = [hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (SHIPPED_TOKENIZER, SHARED_TOKENIZER)]
            assert digest[0] == digest[1], name
    assert len(load_tokenizer()) == 32100


def test_tokenize_as_the_pipeline(tokenizer) -> None:
    ids = tokenize(tokenizer, PROMPTS)
    assert ids.shape == (2, MAX_LENGTH)
    n = int((ids[0] != tokenizer.pad_token_id).sum())
    assert ids[0, n - 1].item() == tokenizer.eos_token_id and (ids[0, n:] == tokenizer.pad_token_id).all()
    assert ids[1, 0].item() == tokenizer.eos_token_id  # "" is just </s>


@pytest.mark.parametrize("kind", ["folder", "single file", "prefixed single file"])
def test_encoding_equals_the_pipeline(tmp_path: Path, t5_folder: Path, reference, tokenizer, kind: str) -> None:
    if kind == "folder":
        path = t5_folder
    else:
        prefix = "" if kind == "single file" else "text_encoders.t5xxl.transformer."
        path = save({prefix + k: v for k, v in file_state(reference).items()}, tmp_path / "t5xxl_fp32.safetensors")
    encoder = load_text_encoder(path, dtype=torch.float32)
    prompts = PROMPTS + [LONG]
    got = encoder.encode(prompts)
    expected = pipeline_embeds(reference, tokenizer, prompts)
    assert got.shape == (3, MAX_LENGTH, 32)
    assert (got - expected).abs().max().item() <= TOL
    assert isinstance(encoder.encode("one prompt"), torch.Tensor)


def test_long_prompt_warns_with_the_count(tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    n = len(tokenizer(LONG).input_ids)
    assert n > MAX_LENGTH
    with caplog.at_level(logging.WARNING, logger="cogvideox_core.loading.text"):
        ids = tokenize(tokenizer, ["short", LONG])
    assert f"{n - MAX_LENGTH} tokens dropped" in caplog.text and "prompt 1" in caplog.text
    assert ids[1, -1].item() == tokenizer.eos_token_id
    assert torch.equal(ids[1, :-1], torch.tensor(tokenizer(LONG).input_ids[:MAX_LENGTH - 1]))


def test_no_warning_at_exactly_226_tokens(tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    words = "cat " * 400
    ids = tokenizer(words).input_ids[:MAX_LENGTH - 1]
    prompt = tokenizer.decode(ids)
    assert len(tokenizer(prompt).input_ids) == MAX_LENGTH
    with caplog.at_level(logging.WARNING, logger="cogvideox_core.loading.text"):
        tokenize(tokenizer, prompt)
    assert "dropped" not in caplog.text


def test_config_from_real_xxl_shapes() -> None:
    xxl = T5Config(vocab_size=32128, d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False)
    with torch.device("meta"):
        model = T5EncoderModel(xxl)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    cfg = t5_config_from_shapes(shapes)
    for field in ("vocab_size", "d_model", "d_ff", "num_layers", "num_heads", "d_kv",
                  "relative_attention_num_buckets", "is_gated_act", "dense_act_fn"):
        assert getattr(cfg, field) == getattr(xxl, field), field
    assert (cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.d_kv) == (4096, 10240, 24, 64, 64)


def test_real_size_single_file_is_seen_as_t5(tmp_path: Path) -> None:
    from cogvideox_core.loading.weights import inspect_path

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64,
                                        feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    info = inspect_path(write_header_only(tmp_path / "t5xxl_fp16.safetensors", shapes, "F16"))
    assert info.family is None and info.component_names == ["text_encoder"]


def fp8_rounded(model: T5EncoderModel) -> T5EncoderModel:
    """A copy whose fp8-stored weights went through float8_e4m3fn."""
    rounded = T5EncoderModel(model.config).eval()
    sd = {k: v.to(torch.float8_e4m3fn).float() if T5_FP8_KEYS.match(k) else v for k, v in model.state_dict().items()}
    rounded.load_state_dict(sd)
    return rounded


def test_fp8_file_is_upcast(tmp_path: Path, reference, tokenizer) -> None:
    sd = {k: v.to(torch.float8_e4m3fn) if T5_FP8_KEYS.match(k) else v for k, v in file_state(reference).items()}
    path = save(sd, tmp_path / "t5xxl_fp8_e4m3fn.safetensors")
    encoder = load_text_encoder(path, dtype=torch.float32)
    assert encoder.model.t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float32
    expected = pipeline_embeds(fp8_rounded(reference), tokenizer, PROMPTS)
    assert (encoder.encode(PROMPTS) - expected).abs().max().item() <= 1e-5


def test_fp8_storage(t5_folder: Path, reference, tokenizer) -> None:
    encoder = load_text_encoder(t5_folder, dtype=torch.float32, weight_dtype=torch.float8_e4m3fn)
    ff = encoder.model.t5.encoder.block[0].layer[1].DenseReluDense
    assert encoder.model.t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert ff.wi_0.weight.dtype == torch.float8_e4m3fn and ff.wo.weight.dtype == torch.float32
    expected = pipeline_embeds(fp8_rounded(reference), tokenizer, PROMPTS)
    assert (encoder.encode(PROMPTS) - expected).abs().max().item() <= 1e-5


def test_scaled_fp8_file_is_dequantised(tmp_path: Path, reference, tokenizer) -> None:
    """ComfyUI's ``t5xxl_fp8_e4m3fn_scaled``: fp8 weights, a ``scale_weight`` each, a marker."""
    stored, dequantised = {}, {}
    for key, value in reference.state_dict().items():
        if T5_FP8_KEYS.match(key):
            scale = value.abs().max() / 448.0
            q = (value / scale).to(torch.float8_e4m3fn)
            stored[key], stored[key[:-len("weight")] + "scale_weight"] = q, scale.reshape(())
            stored[key[:-len("weight")] + "scale_input"] = torch.ones(())
            dequantised[key] = q.float() * scale
        else:
            dequantised[key] = value
            if key != "encoder.embed_tokens.weight":
                stored[key] = value.clone()
    stored["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    encoder = load_text_encoder(save(stored, tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"), dtype=torch.float32)
    want = T5EncoderModel(reference.config).eval()
    want.load_state_dict(dequantised)
    expected = pipeline_embeds(want, tokenizer, PROMPTS)
    assert (encoder.encode(PROMPTS) - expected).abs().max().item() <= 1e-5


def test_bf16_encoder(t5_folder: Path, reference, tokenizer) -> None:
    encoder = load_text_encoder(t5_folder, dtype=torch.bfloat16)
    got = encoder.encode(PROMPTS)
    assert got.dtype == torch.bfloat16
    expected = pipeline_embeds(reference, tokenizer, PROMPTS)
    assert ((got.float() - expected).abs().max() / expected.abs().max()).item() < 0.05


def test_tokenizer_comes_from_the_model_tree(tmp_path: Path, t5_folder: Path) -> None:
    root = tmp_path / "CogVideoX-2b"
    shutil.copytree(t5_folder, root / "text_encoder")
    assert tokenizer_folder(root) is None and tokenizer_folder(root / "text_encoder") is None
    load_tokenizer().save_pretrained(root / "tokenizer")
    assert tokenizer_folder(root) == root / "tokenizer"
    assert tokenizer_folder(root / "text_encoder") == root / "tokenizer"
    encoder = load_text_encoder(root, dtype=torch.float32)
    assert tokenize(encoder.tokenizer, PROMPTS).shape == (2, MAX_LENGTH)


def test_encoder_is_loaded_once_and_tied(t5_folder: Path) -> None:
    model = load_t5_encoder(t5_folder, dtype=torch.float32).t5
    assert model.shared.weight.data_ptr() == model.encoder.embed_tokens.weight.data_ptr()
    assert not model.training and not any(p.is_meta for p in model.parameters())


def test_not_a_t5_file(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "clip_l.safetensors",
                             {"text_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8)}, "F32")
    with pytest.raises(WeightsError, match="clip_l.safetensors: not a CogVideoX T5 encoder: .*CLIP"):
        load_text_encoder(path)
    with pytest.raises(WeightsError, match="no T5 tokenizer here"):
        load_tokenizer(tmp_path)
