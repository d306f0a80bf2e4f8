"""``convert``: any loadable file or folder -> a diffusers folder (diffusers' ``from_pretrained``
is the oracle) or a ComfyUI-layout file; bit-exact where the dtype is kept; refusals; atomic
writes; peak RSS of a conversion measured in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from safetensors import safe_open

from cogvideox_core.cli.main import main
from cogvideox_core.errors import NonFiniteWeightsError, WeightsError
from cogvideox_core.loading.convert import convert
from cogvideox_core.loading.weights import load_transformer, load_vae
from test_sat_checkpoint import sat_transformer, save_sat_release
from test_weights import TOL, compare_outputs, size_for
from weights_util import (comfyui_key, layout_state, random_transformer, random_vae, sat_vae_state, save,
                          state)

ROOT = Path(__file__).resolve().parents[1]


def read_file(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def assert_equal_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def sat_root(tmp_path: Path, name: str) -> Path:
    """A SAT release root: transformer/latest + transformer/1000/mp_rank_00_model_states.pt, vae/3d-vae.pt."""
    root = tmp_path / f"{name}-sat"
    save_sat_release(root, sat_transformer(name))
    (root / "vae").mkdir()
    torch.save({"state_dict": sat_vae_state(state(random_vae()))}, root / "vae" / "3d-vae.pt")
    return root


@pytest.mark.parametrize("name", ["5b", "1.5-5b", "1.5-5b-i2v"])
def test_sat_to_diffusers_from_pretrained(tmp_path: Path, name: str) -> None:
    root = sat_root(tmp_path, name)
    dest = tmp_path / "out"
    family = "5b" if name == "5b" else None  # a tiny width cannot tell 2B from 5B
    result = convert(root, dest, family=family, max_shard_bytes=20_000)
    shards = result.written[0].files
    assert len(shards) > 1 and all(p.is_file() for p in shards)
    index = json.loads((dest / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    ref = CogVideoXTransformer3DModel.from_pretrained(dest / "transformer").eval()
    assert_equal_state({k: v for k, v in ref.state_dict().items()},
                       state(random_transformer(name, small_sample=False)))
    ours, _ = load_transformer(root, dtype=torch.float32, family=family)
    assert compare_outputs(ref, ours, *size_for(name)) <= TOL
    vae = AutoencoderKLCogVideoX.from_pretrained(dest / "vae")
    assert_equal_state(vae.state_dict(), state(random_vae()))
    assert vae.config.scaling_factor == 0.7 and vae.config.invert_scale_latents == (name == "1.5-5b-i2v")
    ours_vae = load_vae(dest, dtype=torch.float32)
    assert_equal_state(ours_vae.state_dict(), load_vae(root, dtype=torch.float32).state_dict())


def test_comfyui_file_to_diffusers(tmp_path: Path) -> None:
    sd = state(random_transformer("1.5-5b-i2v", small_sample=False))
    src = save(layout_state(sd, "comfyui", "model.diffusion_model.", True), tmp_path / "comfy.safetensors")
    convert(src, tmp_path / "out")
    assert_equal_state(read_file(tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors"), sd)
    ref = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer")
    assert_equal_state(ref.state_dict(), sd)
    assert not (tmp_path / "out" / "vae").exists()


def test_diffusers_to_comfyui_and_back(tmp_path: Path) -> None:
    ref = random_transformer("1.5-5b")
    ref.save_pretrained(tmp_path / "model" / "transformer")
    random_vae().save_pretrained(tmp_path / "model" / "vae")
    result = convert(tmp_path / "model", tmp_path / "cogvideox_comfy.safetensors", to="comfyui")
    assert "vae" in result.notes
    written = read_file(tmp_path / "cogvideox_comfy.safetensors")
    assert_equal_state(written, {comfyui_key(k): v for k, v in state(ref).items()})
    back, fam = load_transformer(tmp_path / "cogvideox_comfy.safetensors", dtype=torch.float32)
    assert fam.name == "1.5-5b"
    assert_equal_state(back.state_dict(), state(ref))
    convert(tmp_path / "cogvideox_comfy.safetensors", tmp_path / "again")  # and on to diffusers
    assert_equal_state(CogVideoXTransformer3DModel.from_pretrained(tmp_path / "again" / "transformer").state_dict(),
                       state(ref))


def test_dtype_conversion_and_config_kept(tmp_path: Path) -> None:
    ref = random_transformer("5b")  # the tiny sample grid: only config.json says it
    ref.save_pretrained(tmp_path / "transformer")
    convert(tmp_path / "transformer", tmp_path / "out", dtype="bf16")
    out = tmp_path / "out" / "transformer"
    assert_equal_state(read_file(out / "diffusion_pytorch_model.safetensors"),
                       {k: v.to(torch.bfloat16) for k, v in state(ref).items()})
    config = json.loads((out / "config.json").read_text())
    original = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert config == original


def test_refusals(tmp_path: Path) -> None:
    src = save(state(random_transformer("2b", small_sample=False)), tmp_path / "in" / "t.safetensors")
    for dest in (src, src.parent, tmp_path):
        with pytest.raises(ValueError, match="is or holds the input"):
            convert(src, dest, overwrite=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="taken already exists.*--overwrite"):
        convert(src, tmp_path / "taken")
    convert(src, tmp_path / "taken", overwrite=True)
    assert (tmp_path / "taken" / "transformer" / "config.json").is_file()
    with pytest.raises(ValueError, match=r"\.safetensors file"):
        convert(src, tmp_path / "comfy.bin", to="comfyui")
    vae = save(state(random_vae()), tmp_path / "vae.safetensors")
    with pytest.raises(WeightsError, match="no CogVideoX transformer"):
        convert(vae, tmp_path / "v.safetensors", to="comfyui")
    with pytest.raises(ValueError, match="dtype='fp8': must be one of keep, bf16"):
        convert(src, tmp_path / "x", dtype="fp8")


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    sd = state(random_transformer("2b", small_sample=False))
    sd["proj_out.weight"][0, 0] = float("nan")  # read near the end: other tensors already written
    src = save(sd, tmp_path / "bad.safetensors")
    with pytest.raises(NonFiniteWeightsError, match="proj_out.weight"):
        convert(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = sat_root(tmp_path, "1.5-5b")
    assert main(["convert", str(root), str(tmp_path / "out"), "--shard-size", "0.00002"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"converted {root} -> {tmp_path / 'out'}: transformer (")
    assert main(["convert", str(root), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'out'} already exists: choose another destination or pass --overwrite"]


# ---- memory -------------------------------------------------------------------------------

RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import cogvideox_core.models.transformer, cogvideox_core.vae.model
    from cogvideox_core.loading.convert import convert

    def hwm():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    base = hwm()
    result = convert(sys.argv[1], sys.argv[2], max_shard_bytes=int(sys.argv[3]))
    print(json.dumps({"base": base, "peak": hwm(), "bytes": result.written[0].nbytes,
                      "files": len(result.written[0].files)}))
""")


def _converted_in_a_process(src: Path, out: Path) -> dict:
    """``convert`` of ``src`` into ``out`` (50 MB shards) in a fresh process: its RSS_SCRIPT report
    (peak and base RSS, bytes and files written)."""
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(src), str(out), str(50 * 10**6)], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _big_state() -> dict:
    """The state dict of a ~250 MB fp32 diffusers transformer (14 heads x 64, 4 layers), seeded."""
    torch.manual_seed(0)
    big = CogVideoXTransformer3DModel(num_attention_heads=14, attention_head_dim=64, num_layers=4,
                                      sample_height=8, sample_width=8, sample_frames=5)
    return state(big)


def _peak_delta(r: dict, what: str) -> int:
    """Print the RESULT line of the peak-RSS convert report ``r``; the peak over the base RSS."""
    delta = r["peak"] - r["base"]
    print(f"RESULT convert{what} peak RSS +{delta / 2**20:.0f} MiB over {r['base'] / 2**20:.0f} MiB after "
          f"imports, for {r['bytes'] / 2**20:.0f} MiB of weights written in {r['files']} shards of <= 50 MB")
    return delta


def test_peak_rss_while_converting(tmp_path: Path) -> None:
    """A ~250 MB fp32 SAT checkpoint converted to 50 MB shards in a fresh process: the peak RSS
    over the RSS after imports is about one tensor (the largest is 12.8 MB), not a shard."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    sd = layout_state(_big_state(), "sat", "model.diffusion_model.", False)
    torch.save({"module": sd}, tmp_path / "mp_rank_00_model_states.pt")
    del sd
    r = _converted_in_a_process(tmp_path / "mp_rank_00_model_states.pt", tmp_path / "out")
    delta = _peak_delta(r, "")
    assert r["bytes"] > 120 * 2**20 and r["files"] >= 3
    assert delta < 40 * 2**20


def test_generate_from_sat_equals_generate_from_its_conversion(tmp_path: Path) -> None:
    """``generate`` takes a SAT release root (transformer/latest + <tag>/*.pt; VAE and T5 given
    apart: the pipeline's tiny VAE is too narrow for a config from shapes), and its frames equal
    those from the diffusers folder ``convert`` makes of it, bit for bit."""
    from pipeline_models import save_tree
    from safetensors.torch import load_file

    tree = tmp_path / "tree"
    save_tree("1.5-5b", tree)
    sat = tmp_path / "sat"
    save_sat_release(sat, layout_state(load_file(str(tree / "transformer" / "diffusion_pytorch_model.safetensors")),
                                       "sat", "model.diffusion_model.", True))
    convert(sat, tmp_path / "converted")
    args = ["--prompt", "a lighthouse", "--frames", "9", "--height", "32", "--width", "48", "--steps", "2",
            "--seed", "3", "--device", "cpu", "--dtype", "float32", "--text-encoder", str(tree / "text_encoder"),
            "--vae", str(tree / "vae")]
    for model in ("sat", "converted"):
        out = tmp_path / f"{model}.safetensors"
        assert main(["generate", "--model", str(tmp_path / model), *args, "--out", str(out)]) == 0
    frames = [load_file(str(tmp_path / f"{m}.safetensors"))["frames"] for m in ("sat", "converted")]
    assert frames[0].shape == (9, 32, 48, 3) and torch.equal(frames[0], frames[1])


def test_full_tree_notes_what_is_not_converted(tmp_path: Path) -> None:
    from pipeline_models import save_tree

    save_tree("2b", tmp_path / "tree")
    result = convert(tmp_path / "tree", tmp_path / "out")
    assert [w.name for w in result.written] == ["transformer", "vae"]
    assert {"text_encoder", "tokenizer", "scheduler"} <= result.notes.keys()
    assert (tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text() == \
        (tmp_path / "tree" / "scheduler" / "scheduler_config.json").read_text()
    for part in ("transformer", "vae"):  # diffusers' own config.json kept as it was
        assert json.loads((tmp_path / "out" / part / "config.json").read_text()) == \
            json.loads((tmp_path / "tree" / part / "config.json").read_text())
    assert "text_encoder: the T5 encoder is not converted" in result.summary()


# ---- quantized sources: GGUF and ComfyUI scaled fp8, dequantized ---------------------------

def dequantized_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state with each GGUF layer's weight as it computes with it (float32)."""
    from cogvideox_core.loading.gguf_file import GGUFLinear

    out = dict(model.state_dict())
    for name, m in model.named_modules():
        if isinstance(m, GGUFLinear):
            out[f"{name}.weight"] = m.stored_weight(torch.float32, torch.device("cpu"))
    return out


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K"])
def test_gguf_to_diffusers_is_what_the_loader_dequantizes(tmp_path: Path, qtype: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32: the written tensors equal the loader's dequantized weights bit for bit (block
    linears kept quantized and the quantized ``text_proj`` dequantized at load alike; convert
    dequantizes 3 blocks at a time here, so tensors span many pieces and a partial last one),
    and diffusers computes with them what our GGUF model computes."""
    from test_gguf import block_type, ours_output, outputs, tiny, write_gguf

    monkeypatch.setattr("cogvideox_core.loading.convert.DEQUANT_BLOCKS", 3)

    ref = tiny(head_dim=128 if qtype.endswith("_K") else 16)
    src = write_gguf(tmp_path / f"tiny-{qtype}.gguf", state(ref), block_type(qtype))
    model, _ = load_transformer(src, dtype=torch.float32, family="2b")
    want = dequantized_state(model)
    convert(src, tmp_path / "out", dtype="fp32", family="2b")
    got = read_file(tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert_equal_state(got, want)
    back = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer").eval()
    assert (outputs(back) - ours_output(model, ref)).abs().max().item() <= TOL


def test_gguf_keep_writes_bf16_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under "keep" the quantized tensors are written dequantized as bf16 (said in a warning),
    the file's F32 tensors as stored; ``--to comfyui`` loads back as the same weights."""
    from test_gguf import block_type, tiny, write_gguf

    sd = state(tiny())
    src = write_gguf(tmp_path / "tiny-Q8_0.gguf", sd, block_type("Q8_0"))
    want = dequantized_state(load_transformer(src, dtype=torch.float32, family="2b")[0])
    quantized = {k for k, t in sd.items() if block_type("Q8_0")(k, t) == "Q8_0"}
    with caplog.at_level("WARNING", logger="cogvideox_core.loading.convert"):
        convert(src, tmp_path / "comfy.safetensors", to="comfyui", family="2b")
    assert f"{len(quantized)} quantized tensors (Q8_0) have no float dtype to keep: written dequantized " \
           "as bfloat16" in caplog.text
    got = read_file(tmp_path / "comfy.safetensors")
    assert_equal_state(got, {comfyui_key(k): v.to(torch.bfloat16) if k in quantized else sd[k]
                             for k, v in want.items()})
    back, _ = load_transformer(tmp_path / "comfy.safetensors", dtype=torch.float32, family="2b")
    assert_equal_state(back.state_dict(), {k: v.to(torch.bfloat16).float() if k in quantized else v
                                           for k, v in want.items()})


def test_scaled_fp8_to_diffusers_is_what_the_loader_dequantizes(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """ComfyUI scaled fp8: fp32 output bit for bit ``weight * scale_weight`` as the loader
    dequantizes it (``scale_input`` and the marker dropped); "keep": those as bf16, warned."""
    from test_scaled_fp8 import comfy_scaled_fp8

    ref = random_transformer("5b", small_sample=False)
    stored, expected = comfy_scaled_fp8(state(ref))
    src = save(stored, tmp_path / "cogvideox5b_fp8_e4m3fn_scaled.safetensors")
    loaded = load_transformer(src, dtype=torch.float32)[0].state_dict()
    convert(src, tmp_path / "fp32", dtype="fp32")
    got = read_file(tmp_path / "fp32" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert_equal_state(got, expected)
    assert_equal_state(got, loaded)
    with caplog.at_level("WARNING", logger="cogvideox_core.loading.convert"):
        convert(src, tmp_path / "keep")
    assert "quantized tensors (scaled fp8) have no float dtype to keep" in caplog.text
    kept = read_file(tmp_path / "keep" / "transformer" / "diffusion_pytorch_model.safetensors")
    scaled = {k for k in expected if comfyui_key(k)[: -len("weight")] + "scale_weight" in
              {s.removeprefix("model.diffusion_model.") for s in stored}}
    assert scaled and all(kept[k].dtype == torch.bfloat16 for k in scaled)
    assert_equal_state(kept, {k: v.to(torch.bfloat16) if k in scaled else v for k, v in expected.items()})


def test_peak_rss_while_converting_a_gguf(tmp_path: Path) -> None:
    """The model of :func:`test_peak_rss_while_converting` as a Q8_0 GGUF (~70 MB) converted in a
    fresh process: each tensor is dequantized a few thousand blocks at a time straight into its
    bf16 output and written alone, so the peak over the RSS after imports is about the largest
    tensor (3.2M values: 6.4 MB as bf16, 12.8 MB as float32), not the model (21 MiB seen)."""
    from test_gguf import block_type, write_gguf

    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    src = write_gguf(tmp_path / "big-Q8_0.gguf", _big_state(), block_type("Q8_0"))
    r = _converted_in_a_process(src, tmp_path / "out")
    delta = _peak_delta(r, " (Q8_0 GGUF -> bf16)")
    assert r["bytes"] > 100 * 2**20 and r["files"] >= 2
    assert delta < 40 * 2**20


def test_gguf_non_finite_block_names_the_tensor(tmp_path: Path) -> None:
    """A Q8_0 block whose scale is inf: the loaders' one-line error naming the file and key."""
    import numpy as np
    from test_gguf import block_type, tiny, write_gguf

    from cogvideox_core.loading.gguf_index import read_gguf_index

    src = write_gguf(tmp_path / "bad-Q8_0.gguf", state(tiny()), block_type("Q8_0"))
    entry = read_gguf_index(src)["proj_out.weight"]
    assert entry.dtype == "Q8_0"
    with open(src, "r+b") as f:
        f.seek(entry.offset)
        f.write(np.float16(np.inf).tobytes())
    with pytest.raises(NonFiniteWeightsError, match="proj_out.weight"):
        convert(src, tmp_path / "out", family="2b")
    assert not (tmp_path / "out").exists()
