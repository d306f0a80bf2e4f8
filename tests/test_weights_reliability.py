"""No wrong result from bad weights or a wrong family.

- A NaN or inf in a weight file is refused as the tensor is read (transformer, VAE, T5, fp8 and
  scaled-fp8 files, SAT's fused tensors, direct and staged reads), naming the file, the key and
  the counts; :func:`all_finite` is checked on every bit pattern of the 8- and 16-bit floats.
- A ``family`` the files contradict (config.json, a released width, the layout) is refused;
  where the files cannot tell (a 1.0 model of another width without config.json), the caller's
  choice among the families that fit is taken. Every family x every override is judged.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from cogvideox_core.errors import NonFiniteWeightsError, WeightsError
from cogvideox_core.families import FAMILIES, FAMILY_NAMES, detect_transformer_config
from cogvideox_core.loading import weights
from cogvideox_core.loading.weights import (FP8_TRANSFORMER_KEYS, all_finite, detect_family, find_component,
                                            load_transformer, load_vae, read_state_dict)
from weights_util import (layout_state, random_transformer, random_vae, real_shapes, save, state, tiny_config,
                          write_header_only)

NAN, INF = float("nan"), float("inf")


def poisoned(sd: dict[str, torch.Tensor], key: str, values: dict[int, float]) -> dict[str, torch.Tensor]:
    """``sd`` with ``sd[key]``'s flat positions set to ``values`` (a copy)."""
    bad = sd[key].clone()
    for pos, value in values.items():
        bad.view(-1)[pos] = value
    return dict(sd, **{key: bad})


def counts(nan: int, inf: int) -> str:
    return rf"holds {nan} NaN and {inf} infinite values \(of \d+\)"


DAMAGED = "the file is damaged or was saved from a diverged training; re-download it or convert it again"


# ---- non-finite weights -----------------------------------------------------------------------

@pytest.mark.parametrize("value, nan, inf", [(NAN, 1, 0), (INF, 0, 1), (-INF, 0, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # direct read; staged conversion
def test_transformer_folder_with_a_non_finite_weight_is_refused(tmp_path: Path, value: float, nan: int,
                                                                inf: int, dtype: torch.dtype) -> None:
    key = "transformer_blocks.1.attn1.to_k.weight"
    ref = random_transformer("2b")
    ref.load_state_dict(poisoned(state(ref), key, {5: value}))
    ref.save_pretrained(tmp_path / "transformer")
    file = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(NonFiniteWeightsError,
                       match=rf"^{re.escape(str(file))}: tensor '{re.escape(key)}' {counts(nan, inf)}: {DAMAGED}"):
        load_transformer(tmp_path / "transformer", dtype=dtype)


def test_clean_transformer_and_vae_load(tmp_path: Path) -> None:
    random_transformer("5b").save_pretrained(tmp_path / "transformer")
    random_vae().save_pretrained(tmp_path / "vae")
    model, family = load_transformer(tmp_path, dtype=torch.float32)
    vae = load_vae(tmp_path, dtype=torch.bfloat16)
    assert family.name == "5b"
    assert all(torch.isfinite(t).all() for t in [*model.state_dict().values(), *vae.state_dict().values()])


@pytest.mark.parametrize("value, nan, inf", [(NAN, 1, 0), (INF, 0, 1)])
def test_vae_with_a_non_finite_weight_is_refused(tmp_path: Path, value: float, nan: int, inf: int) -> None:
    key = "decoder.up_blocks.1.resnets.0.conv2.conv.weight"
    ref = random_vae()
    ref.load_state_dict(poisoned(state(ref), key, {0: value}))
    ref.save_pretrained(tmp_path / "vae")
    with pytest.raises(NonFiniteWeightsError, match=rf"vae.diffusion_pytorch_model.safetensors: tensor "
                                                    rf"'{re.escape(key)}' {counts(nan, inf)}: {DAMAGED}"):
        load_vae(tmp_path / "vae", dtype=torch.float32)
    with pytest.raises(WeightsError):  # and it is a WeightsError (and a ValueError) for callers
        load_vae(tmp_path / "vae", dtype=torch.bfloat16)


def test_t5_encoder_reads_through_the_same_check(tmp_path: Path) -> None:
    """The T5 loader reads through :func:`~cogvideox_core.loading.weights.load_module` too."""
    from transformers import T5EncoderModel

    from cogvideox_core.loading.text import load_t5_encoder
    from cogvideox_core.tiny import tiny_t5_config

    t5 = T5EncoderModel(tiny_t5_config())
    key = "encoder.block.0.layer.1.DenseReluDense.wo.weight"
    with torch.no_grad():
        t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.view(-1)[[1, 2]] = torch.tensor([NAN, -INF])
    t5.save_pretrained(tmp_path / "text_encoder")
    with pytest.raises(NonFiniteWeightsError, match=rf"model.safetensors: tensor '{re.escape(key)}' "
                                                    rf"{counts(1, 1)}"):
        load_t5_encoder(tmp_path / "text_encoder", dtype=torch.float32)


def test_counts_span_the_pieces_a_tensor_is_read_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values spread over many read pieces and check pieces are all counted."""
    for name, size in (("STAGE_BYTES", 40), ("READ_BYTES", 24), ("CHECK_BYTES", 8)):
        monkeypatch.setattr(weights, name, size)
    sd = state(random_transformer("2b", small_sample=False))
    key = "transformer_blocks.0.ff.net.0.proj.weight"
    bad = poisoned(sd, key, {0: NAN, 7: NAN, 100: INF, 101: -INF, 102: INF, sd[key].numel() - 1: NAN})
    path = save(bad, tmp_path / "many.safetensors")
    for dtype in (torch.float32, torch.bfloat16):
        with pytest.raises(NonFiniteWeightsError, match=counts(3, 3)):
            load_transformer(path, dtype=dtype)


def test_fused_sat_tensor_names_its_key_in_the_file(tmp_path: Path) -> None:
    """SAT's fused q/k/v is read in parts; the message names the key the file holds."""
    sd = poisoned(state(random_transformer("2b", small_sample=False)), "transformer_blocks.0.attn1.to_v.weight",
                  {3: NAN})
    path = save(layout_state(sd, "sat", "model.diffusion_model.", False), tmp_path / "sat.safetensors")
    with pytest.raises(NonFiniteWeightsError, match=r"tensor 'model\.diffusion_model\.transformer\.layers\.0\."
                                                    r"attention\.query_key_value\.weight' holds 1 NaN"):
        load_transformer(path, dtype=torch.float32)


def test_fp8_files_are_checked_before_the_saturating_cast(tmp_path: Path) -> None:
    """An inf read into fp8 e4m3fn would become 448 silently: it is refused as stored, and NaN
    in an e4m3fn file (its only non-finite value) or inf in an e5m2 file are refused."""
    sd = state(random_transformer("2b", small_sample=False))
    key = "transformer_blocks.1.attn1.to_q.weight"
    assert FP8_TRANSFORMER_KEYS.match(key)
    bf16 = {k: v.to(torch.bfloat16) for k, v in poisoned(sd, key, {2: INF}).items()}
    with pytest.raises(NonFiniteWeightsError, match=counts(0, 1)):
        load_transformer(save(bf16, tmp_path / "bf16.safetensors"), dtype=torch.bfloat16,
                         weight_dtype=torch.float8_e4m3fn)
    for fp8, value, nan, inf in ((torch.float8_e4m3fn, NAN, 1, 0), (torch.float8_e5m2, -INF, 0, 1)):
        stored = {k: v.to(fp8) if FP8_TRANSFORMER_KEYS.match(k) else v for k, v in sd.items()}
        bad = poisoned(stored, key, {4: value})
        path = save(bad, tmp_path / f"{fp8}.safetensors")
        for weight_dtype in (None, fp8):
            with pytest.raises(NonFiniteWeightsError, match=counts(nan, inf)):
                load_transformer(path, dtype=torch.float32, weight_dtype=weight_dtype)
        load_transformer(save(stored, tmp_path / "clean.safetensors"), dtype=torch.float32)


def test_a_non_finite_fp8_scale_is_refused(tmp_path: Path) -> None:
    """ComfyUI ``scaled_fp8``: the per-tensor scale is read (and checked) like any tensor."""
    sd = state(random_transformer("2b", small_sample=False))
    stored = {}
    for key, value in sd.items():
        if FP8_TRANSFORMER_KEYS.match(key):
            stored[key] = value.to(torch.float8_e4m3fn)
            bad = key.startswith("transformer_blocks.1.ff")
            stored[key[:-len("weight")] + "scale_weight"] = torch.tensor(NAN if bad else 1.0)
        else:
            stored[key] = value
    stored["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = save(layout_state(stored, "comfyui", "model.diffusion_model.", False), tmp_path / "scaled.safetensors")
    with pytest.raises(NonFiniteWeightsError, match=r"tensor 'model\.diffusion_model\.blocks\.1\.ff_(proj|out)\."
                                                    r"scale_weight' holds 1 NaN and 0 infinite values \(of 1\)"):
        load_transformer(path, dtype=torch.bfloat16)


def test_read_state_dict_checks_too(tmp_path: Path) -> None:
    sd = {"a": torch.ones(3), "b": torch.tensor([1.0, NAN]), "i": torch.arange(4)}
    path = save(sd, tmp_path / "sd.safetensors")
    with pytest.raises(NonFiniteWeightsError, match=r"sd.safetensors: tensor 'b' holds 1 NaN"):
        read_state_dict(path)
    assert read_state_dict(save({"i": torch.arange(4), "e": torch.zeros(0)}, tmp_path / "ok.safetensors"))


@pytest.mark.parametrize("dtype, bits", [(torch.float8_e4m3fn, torch.uint8), (torch.float8_e5m2, torch.uint8),
                                         (torch.bfloat16, torch.int16), (torch.float16, torch.int16)])
def test_all_finite_on_every_bit_pattern(dtype: torch.dtype, bits: torch.dtype) -> None:
    lo, hi = (0, 256) if bits == torch.uint8 else (-32768, 32768)
    values = torch.arange(lo, hi, dtype=torch.int32).to(bits).view(dtype)
    expected = [math.isfinite(v) for v in values.float().tolist()]
    assert [all_finite(values[i:i + 1]) for i in range(len(values))] == expected
    finite = values[torch.tensor(expected)]
    assert all_finite(finite)


@pytest.mark.parametrize("dtype, bits", [(torch.float32, torch.int32), (torch.float64, torch.int64)])
def test_all_finite_at_the_edges_of_wide_floats(dtype: torch.dtype, bits: torch.dtype) -> None:
    info = torch.finfo(dtype)
    finite = torch.tensor([0.0, -0.0, info.max, -info.max, info.tiny, info.tiny / 8, -info.tiny / 8], dtype=dtype)
    assert all_finite(finite)
    for bad in (NAN, -NAN, INF, -INF):
        assert not all_finite(torch.cat([finite, torch.tensor([bad], dtype=dtype)]))
    nan_payloads = torch.tensor([-1, torch.iinfo(bits).max], dtype=bits).view(dtype)  # all-ones mantissas
    assert not any(all_finite(v[None]) for v in nan_payloads)
    assert all_finite(torch.arange(5)) and all_finite(torch.zeros(0)) and not all_finite(torch.tensor(NAN))


def test_all_finite_finds_one_value_in_any_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "CHECK_BYTES", 64)
    x = torch.randn(1001)
    assert all_finite(x) and all_finite(x.to(torch.bfloat16))
    for pos in (0, 15, 16, 500, 1000):
        y = x.clone()
        y[pos] = -INF
        assert not all_finite(y) and not all_finite(y.to(torch.bfloat16))


# ---- family overrides -------------------------------------------------------------------------

def tiny_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the family's tiny diffusers transformer (built on meta)."""
    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**tiny_config(name, small_sample=False).to_diffusers())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# What the files cannot tell: a 1.0 model of no released width without config.json keeps its
# positions (sincos: 2B-class, RoPE: 5B-class) out of its shapes; a stored position table is
# 5B-I2V's learned one or a 2B sincos table saved by older code.
UNTOLD = {"2b": {"2b", "5b"}, "5b": {"2b", "5b"},
          "fun-2b-inp": {"fun-2b-inp", "fun-5b-inp"}, "fun-5b-inp": {"fun-2b-inp", "fun-5b-inp"},
          "fun-2b-control": {"fun-2b-control", "fun-5b-control"},
          "fun-5b-control": {"fun-2b-control", "fun-5b-control"},
          "5b-i2v": {"fun-2b-control", "5b-i2v"}}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_override_is_judged(name: str) -> None:
    """For every family's weights and every override: taken iff the files cannot tell it from
    theirs. With config.json or at the released width the files tell; tiny without config.json
    only the 1.0 2B/5B split is open; the 1.5 layout is always told."""
    cases = {"config.json": (tiny_shapes(name), FAMILIES[name].transformer.to_diffusers(), {name}),
             "released width": (real_shapes(name), None, {name}),
             "tiny width": (tiny_shapes(name), None, UNTOLD.get(name, {name}))}
    for label, (shapes, config, accepted) in cases.items():
        assert detect_transformer_config(shapes, config)[0] in accepted, label
        for other in FAMILY_NAMES:
            if other in accepted:
                got, cfg = detect_transformer_config(shapes, config, other)
                assert got == other and cfg.positions == FAMILIES[other].transformer.positions, (label, other)
            else:
                with pytest.raises(ValueError, match=rf"^family='{re.escape(other)}' does not fit these weights: "
                                                     r".* says .*; .*leave it out to use the detected one"):
                    detect_transformer_config(shapes, config, other)


def folder(tmp_path: Path, name: str) -> Path:
    random_transformer(name).save_pretrained(tmp_path / "transformer")
    return tmp_path / "transformer"


@pytest.mark.parametrize("name, other, says", [("2b", "5b", "false"), ("5b", "2b", "true")])
def test_config_json_contradicting_the_family_is_refused(tmp_path: Path, name: str, other: str,
                                                         says: str) -> None:
    path = folder(tmp_path, name)
    config = path / "config.json"
    with pytest.raises(ValueError, match=rf"^family='{other}' does not fit these weights: config.json at "
                                         rf"{re.escape(str(config))} \(use_rotary_positional_embeddings={says}\) "
                                         rf"says '{name}'; leave it out to use the detected one$"):
        load_transformer(path, dtype=torch.float32, family=other)
    _, family = load_transformer(path, dtype=torch.float32, family=name)  # the same name is fine
    assert family.name == name and family.transformer.uses_rope == (name == "5b")


def test_layout_contradicting_the_family_is_refused(tmp_path: Path) -> None:
    path = folder(tmp_path, "2b")
    with pytest.raises(ValueError, match=r"family='fun-2b-inp' does not fit these weights: the tensor shapes' "
                                         r"layout \(1.0 patch embedding, 16 input channels\) says '2b'"):
        load_transformer(path, family="fun-2b-inp")
    with pytest.raises(ValueError, match=r"family='7b' is not a CogVideoX family"):
        load_transformer(path, family="7b")


@pytest.mark.parametrize("name, other, width", [("2b", "5b", "1920 \\(CogVideoX-2B's\\)"),
                                                ("5b", "2b", "3072 \\(CogVideoX-5B's\\)")])
def test_released_width_contradicting_the_family_is_refused(tmp_path: Path, name: str, other: str,
                                                            width: str) -> None:
    """A single real-size file without config.json: its width tells 2B from 5B (headers only)."""
    comp = find_component(write_header_only(tmp_path / "model.safetensors", real_shapes(name)), "transformer")
    with pytest.raises(ValueError, match=rf"family='{other}' does not fit these weights: the tensor shapes' "
                                         rf"width {width} says '{name}'; leave it out"):
        detect_family(comp, other)
    assert detect_family(comp, name)[0] == detect_family(comp)[0] == name


def test_where_the_files_cannot_tell_the_choice_is_taken(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    sd = state(random_transformer("5b-i2v", small_sample=False))
    path = save(sd, tmp_path / "t.safetensors")
    with caplog.at_level(logging.WARNING, logger="cogvideox_core.families"):
        assert detect_family(find_component(path, "transformer"))[0] == "fun-2b-control"
    assert "width 32 is not a released width" in caplog.text
    assert "pass family=fun-2b-control or 5b-i2v to choose" in caplog.text
    model, family = load_transformer(path, dtype=torch.float32, family="5b-i2v")
    assert family.name == "5b-i2v" and family.transformer.learned_positions
    assert torch.equal(model.state_dict()["patch_embed.pos_embedding"], sd["patch_embed.pos_embedding"].float())
    with pytest.raises(ValueError, match=r"family='5b' does not fit these weights: the tensor shapes' layout "
                                         r"\(1.0 patch embedding, 32 input channels, a position table\) says "
                                         r"'fun-2b-control' or '5b-i2v'; pass one of those"):
        load_transformer(path, family="5b")


def test_a_config_without_the_positions_key_falls_back_to_the_width(tmp_path: Path) -> None:
    path = folder(tmp_path, "2b")
    config = json.loads((path / "config.json").read_text())
    del config["use_rotary_positional_embeddings"]
    (path / "config.json").write_text(json.dumps(config))
    assert detect_family(find_component(path, "transformer"), "5b")[0] == "5b"  # width 32: open
