"""LoRAs without a host: ``cogvideox_core.loading.lora_apply`` and ``generate --lora``.

The merged weights are checked against the update written out by hand (``W + strength * up @
down``), the CLI's video against the in-process pipeline on weights merged by hand; GGUF layers
take the LoRA at compute, int8 weights are refused before anything changes. (The demo's shipped
LoRA, red prompt to blue video: ``test_demo.py``.)
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from cli_util import refused
from safetensors.torch import load_file, save_file

from cogvideox_core.cli.main import main
from cogvideox_core.errors import WeightsError
from cogvideox_core.generation.pipeline import GenerateRequest, generate
from cogvideox_core.loading.gguf_file import GGUFLinear, gguf_layers
from cogvideox_core.loading.lora_apply import apply_lora, parse_lora_spec
from cogvideox_core.loading.weights import load_transformer

ARGS = ["--prompt", "a lighthouse at dusk", "--frames", "9", "--height", "32", "--width", "48",
        "--steps", "3", "--seed", "11", "--device", "cpu", "--sampler", "ddim"]
TARGETS = ("attn1.to_q.weight", "attn1.to_v.weight", "ff.net.2.weight")


def peft_lora(state: dict[str, torch.Tensor], seed: int = 5, rank: int = 4) -> dict[str, torch.Tensor]:
    """A PEFT-layout LoRA (no alpha: scale 1) on :data:`TARGETS` of every block of ``state``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in state.items():
        if key.endswith(TARGETS):
            stem = key.removesuffix(".weight")
            out[f"transformer.{stem}.lora_A.weight"] = 0.1 * torch.randn(rank, w.shape[1], generator=g)
            out[f"transformer.{stem}.lora_B.weight"] = 0.1 * torch.randn(w.shape[0], rank, generator=g)
    return out


def merged_by_hand(state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], strength: float
                   ) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in state.items()}
    for key in state:
        down = lora.get(f"transformer.{key.removesuffix('.weight')}.lora_A.weight")
        if down is not None:
            up = lora[f"transformer.{key.removesuffix('.weight')}.lora_B.weight"]
            out[key] += strength * (up @ down)
    return out


@pytest.fixture(scope="module")
def lora_file(tiny_5b, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _root, models = tiny_5b
    path = tmp_path_factory.mktemp("lora") / "tiny_peft.safetensors"
    save_file(peft_lora(models.transformer.state_dict()), str(path))
    return path


def test_apply_lora_merges_the_update(tiny_5b, lora_file: Path) -> None:
    root, _models = tiny_5b
    model, _fam = load_transformer(root, torch.float32, "cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changed = apply_lora(model, lora_file, 0.7)
    assert changed and all(k.endswith(TARGETS) for k in changed)
    want = merged_by_hand(before, load_file(str(lora_file)), 0.7)
    for key, value in model.state_dict().items():
        # fp32: the same sum in another order at most (the update is formed in float32 either way)
        torch.testing.assert_close(value, want[key], rtol=0, atol=1e-6, msg=key)
        assert (key in changed) == (not torch.equal(value, before[key])), key


def test_generate_with_lora_equals_the_pipeline_on_merged_weights(tiny_5b, lora_file: Path, tmp_path: Path) -> None:
    root, models = tiny_5b
    out = tmp_path / "frames.safetensors"
    assert main(["generate", "--model", str(root), *ARGS, "--lora", f"{lora_file}:0.7", "--out", str(out)]) == 0
    merged = copy.deepcopy(models.transformer)
    merged.load_state_dict(merged_by_hand(merged.state_dict(), load_file(str(lora_file)), 0.7))
    request = GenerateRequest(prompt="a lighthouse at dusk", frames=9, height=32, width=48, steps=3, seed=11,
                              sampler="ddim")
    want = generate(dataclasses.replace(models, transformer=merged), request)
    got = load_file(str(out))["frames"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # fp32; merge sums in another order
    assert (got - generate(models, request)).abs().max() > 1e-3  # the LoRA changes the video


def test_gguf_layers_take_the_lora_at_compute(tiny_5b, lora_file: Path, tmp_path: Path) -> None:
    from test_gguf import block_type, write_gguf

    root, models = tiny_5b
    path = write_gguf(tmp_path / "t.gguf", models.transformer.state_dict(), block_type("Q8_0"))
    model, _fam = load_transformer(path, torch.float32, "cpu", family="5b")
    layers = {n: model.get_submodule(n) for n in gguf_layers(model)}
    assert layers
    stored = {n: m.weight.detach().clone() for n, m in layers.items()}
    changed = apply_lora(model, lora_file, -0.5)
    for name, layer in layers.items():
        assert isinstance(layer, GGUFLinear) and torch.equal(layer.weight, stored[name])
        terms = layer.lora_terms
        assert (len(terms) == 1 and terms[0][0] == -0.5) == (f"{name}.weight" in changed), name


def test_int8_weights_are_refused_before_anything_changes(tiny_5b, lora_file: Path) -> None:
    root, _models = tiny_5b
    model, _fam = load_transformer(root, torch.float32, "cpu", weight_dtype=torch.int8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match="quantized.*--weight-dtype bf16"):
        apply_lora(model, lora_file)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("suffix, strength", [("", 1.0), (":0.5", 0.5), (":-1", -1.0), (":2e-1", 0.2),
                                                   (":10", 10.0), (":-10", -10.0)])
def test_spec_strengths(lora_file: Path, suffix: str, strength: float) -> None:
    assert parse_lora_spec(f"{lora_file}{suffix}") == (lora_file, strength)


@pytest.mark.parametrize("spec, words", [
    ("{f}:abc", ["strength 'abc' is not a number"]),
    ("{f}:nan", ["not finite"]),
    ("{f}:10.5", ["strength 10.5 is outside -10..10"]),
    ("{f}:-1e3", ["strength -1000 is outside -10..10"]),
    ("{d}", ["is a folder"]),
    ("{d}/missing.safetensors:0.5", ["missing.safetensors:0.5", "no such file"]),
    ("{d}/lora.pt", ["no such file"]),
])
def test_spec_refusals(lora_file: Path, spec: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        parse_lora_spec(spec.format(f=lora_file, d=lora_file.parent))
    assert all(w in str(err.value) for w in ["--lora", *words]), err.value


def test_wrong_suffix_is_named(tmp_path: Path) -> None:
    path = tmp_path / "lora.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"--lora .*lora\.pt: \.pt; LoRAs are read from \.safetensors"):
        parse_lora_spec(str(path))


@pytest.mark.parametrize("extra, words", [
    (["--lora", "missing.safetensors"], ["--lora missing.safetensors", "no such file"]),
    (["--lora", "{f}", "--weight-dtype", "int8"], ["--lora with --weight-dtype int8"]),
    (["--lora", "{f}", "--weight-dtype", "fp8_e4m3fn"], ["--weight-dtype fp8_e4m3fn"]),
])
def test_generate_refuses_before_loading(tiny_5b, lora_file: Path, tmp_path: Path, no_loading: None,
                                         capsys: pytest.CaptureFixture, extra: list[str], words: list[str]) -> None:
    root, _models = tiny_5b
    argv = ["generate", "--model", str(root), *ARGS, *(e.format(f=lora_file) for e in extra),
            "--out", str(tmp_path / "x.mp4")]
    err = refused(capsys, argv)
    assert all(w in err for w in words), err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("keys, words", [
    ({"transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 7), "transformer_blocks.0.attn1.to_q.lora_B.weight": (5, 4)},
     ["does not fit the weight", "another model size"]),
    ({"down_blocks.0.attentions.0.to_q.lora_A.weight": (4, 8), "down_blocks.0.attentions.0.to_q.lora_B.weight": (8, 4)},
     ["no LoRA weight matches a module", "another model or family"]),
    ({"not_a_lora": (3,)}, ["no LoRA weight matches", "not_a_lora"]),
], ids=["other-size", "other-model", "no-lora-keys"])
def test_a_lora_of_another_model_is_refused_from_its_header(tiny_5b, tmp_path: Path, no_loading: None,
                                                           capsys: pytest.CaptureFixture, keys: dict,
                                                           words: list[str]) -> None:
    """The LoRA's keys and shapes are matched against the transformer's headers before any weights
    load (the no_loading fixture fails the test if one does)."""
    root, _models = tiny_5b
    path = tmp_path / "other.safetensors"
    save_file({k: torch.ones(shape) for k, shape in keys.items()}, str(path))
    err = refused(capsys, ["generate", "--model", str(root), *ARGS, "--lora", str(path),
                           "--out", str(tmp_path / "x.mp4")])
    assert err.count("\n") <= 1 and f"--lora {path}" in err and all(w in err for w in words), err
    assert not (tmp_path / "x.mp4").exists()


def test_the_header_check_agrees_with_loading(tiny_5b, lora_file: Path) -> None:
    from cogvideox_core.loading.lora import check_lora_file, load_lora
    from cogvideox_core.loading.lora_apply import weight_shapes

    _root, models = tiny_5b
    shapes = weight_shapes(models.transformer)
    assert check_lora_file(lora_file, shapes) == len(load_lora(lora_file, shapes)) > 0
