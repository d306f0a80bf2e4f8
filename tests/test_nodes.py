"""Every node's function called directly, without ComfyUI: happy paths and the errors a user sees.

The repository root is imported as a package, as ComfyUI imports a custom node folder, so the
node files' relative imports and the plain-torch host fallback (``nodes/host/`` without
``comfy``) are what runs, with ComfyUI's LoRA patching and a progress record stood in for by
``tests/node_host.py``. Models are the tiny random ones of ``tests/tiny_models.py``, written in
the real on-disk formats to a temporary models folder that ``host.folders.MODELS_DIR`` points at.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import torch

from make_workflows import CORE_NODES, ROOT, WORKFLOWS, load_pack, render
from tiny_models import FRAMES, HEIGHT, LORA_RANK, WIDTH, lora_state, write_models

PACK = load_pack()
import node_host  # noqa: E402
from node_host import node  # noqa: E402
from cogvideox_pack.cogvideox_core.errors import Interrupted, WeightsError  # noqa: E402
from cogvideox_pack.cogvideox_core.generation.pipeline import GenerateRequest, Models, generate_latents  # noqa: E402
from cogvideox_pack.cogvideox_core.runtime import TorchRuntime  # noqa: E402
from cogvideox_pack.cogvideox_core.loading.text import encode_prompts  # noqa: E402
from cogvideox_pack.cogvideox_core.video_io import write_mp4  # noqa: E402
from cogvideox_pack.nodes import host  # noqa: E402
from cogvideox_pack.nodes.text import cogvideox_tokens  # noqa: E402

NODES = PACK.NODE_CLASS_MAPPINGS
PROMPT = "a panda playing a guitar in a bamboo forest"


# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("nodes") / "models")


@pytest.fixture(scope="module", autouse=True)
def stand_in_host() -> Iterator[None]:
    """ComfyUI's LoRA patching and a progress record behind ``host.wrap`` / ``host.runtime``."""
    with pytest.MonkeyPatch.context() as mp:
        node_host.install(mp, host)
        yield


@pytest.fixture(autouse=True)
def folders(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ComfyUI: the host finds models in ``models_dir``; output and input go to tmp_path."""
    monkeypatch.setattr(host.folders, "MODELS_DIR", str(models_dir))
    monkeypatch.setattr(host.folders, "OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("COGVIDEOX_INPUT_DIR", str(tmp_path / "input"))
    return tmp_path


@pytest.fixture(scope="module")
def loaded(models_dir: Path, stand_in_host: None) -> dict:
    """The 2B tiny model, VAE and T5 loaded once (fp32), and its prompt conditioning."""
    host.folders.MODELS_DIR = str(models_dir)
    try:
        model, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "fp32")
        vae, = node("CogVideoXVAELoader")("CogVideoX-2b", "fp32")
        t5, = node("CogVideoXT5Loader")("CogVideoX-2b", "fp32")
        cond, = node("CogVideoXTextEncode")(t5, PROMPT, "blurry")
    finally:
        host.folders.MODELS_DIR = None
    return {"model": model, "vae": vae, "t5": t5, "cond": cond}


def _load(root: str) -> tuple:
    model, _fps = node("CogVideoXModelLoader")(root, "fp32")
    vae, = node("CogVideoXVAELoader")(root, "fp32")
    t5, = node("CogVideoXT5Loader")(root, "fp32")
    cond, = node("CogVideoXTextEncode")(t5, PROMPT, "")
    return model, vae, cond


def _image(frames: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(seed))


def _latent(frames: int = FRAMES, batch: int = 1) -> dict:
    return node("CogVideoXEmptyLatent")(WIDTH, HEIGHT, frames, batch)[0]


def _sample(model, cond, latent, seed=1, steps=2, cfg=6.0, sampler="auto", denoise=1.0, context=None):
    return node("CogVideoXSampler")(model, cond, latent, seed, steps, cfg, sampler, denoise, context)[0]


# ---- registration and metadata ----------------------------------------------------------------

def test_every_node_is_described_and_every_input_has_a_tooltip() -> None:
    assert len(NODES) >= 17 and set(NODES) == set(PACK.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in NODES.items():
        assert name.startswith("CogVideoX") and cls.CATEGORY.startswith("CogVideoX/"), name
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20, name
        spec = cls.INPUT_TYPES()
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        for section in ("required", "optional"):
            for input_name, (kind, opts) in spec.get(section, {}).items():
                assert opts.get("tooltip"), f"{name}.{input_name} has no tooltip"
                assert input_name in params, f"{name}.{cls.FUNCTION} does not take {input_name}"
                if kind in ("INT", "FLOAT"):
                    assert {"default", "min", "max", "step"} <= set(opts), f"{name}.{input_name}"
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        assert len(names) == len(cls.RETURN_TYPES), name


def test_pack_types_are_not_standard_type_names() -> None:
    standard = {"MODEL", "VAE", "CLIP", "CONDITIONING", "LATENT", "IMAGE", "MASK", "INT", "FLOAT"}
    for name, cls in NODES.items():
        for t in cls.RETURN_TYPES:
            assert t in standard or t.startswith("COGVIDEOX_"), (name, t)
        assert not {"MODEL", "VAE", "CONDITIONING"} & set(cls.RETURN_TYPES), name


def test_import_is_light_and_fast() -> None:
    """Importing the pack (torch already imported, as in ComfyUI) takes well under a second and
    imports no model library."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT / 'tests')!r}); import torch; "
            "t = time.perf_counter(); from make_workflows import load_pack; load_pack(); "
            "dt = time.perf_counter() - t; "
            "print(dt, [m for m in ('transformers', 'diffusers', 'imageio_ffmpeg', 'PIL', 'comfy') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds, heavy = out.split(" ", 1)
    assert float(seconds) < 1.0 and heavy.strip() == "[]", out


# ---- workflows --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_shipped_workflow_is_what_the_builder_writes(name: str) -> None:
    shipped = (ROOT / "workflows" / f"{name}.json").read_text()
    assert shipped == render(name), "run: python tests/make_workflows.py"
    workflow = json.loads(shipped)
    types = {n["type"] for n in workflow["nodes"]}
    assert types <= set(NODES) | {"Note"} | set(CORE_NODES)
    note = next(n for n in workflow["nodes"] if n["type"] == "Note")
    assert "models/" in note["widgets_values"][0]


def test_every_workflow_file_has_a_builder() -> None:
    assert {p.stem for p in (ROOT / "workflows").glob("*.json")} == set(WORKFLOWS)


# ---- model folders ----------------------------------------------------------------------------

def test_dropdowns_list_diffusers_folders_and_single_files() -> None:
    transformers = host.list_models("transformer")
    assert {"CogVideoX-2b", "CogVideoX-5b-I2V", "CogVideoX-Fun-V1.1-5b-InP",
            "cogvideox_2b_tiny.safetensors"} <= set(transformers)
    assert not any("/" in n for n in transformers)  # no files inside a diffusers tree
    assert "cogvideox_vae_tiny" in host.list_models("vae")
    assert {"t5_tiny.safetensors", "CogVideoX-2b"} <= set(host.list_models("text_encoder"))
    loras = host.list_models("lora")  # then the shipped demo LoRA (test_host_tiny_world)
    assert loras[:2] == ["tiny_kohya.safetensors", "tiny_peft.safetensors"]
    assert all(n.endswith("(shipped demo)") for n in loras[2:]), loras


def test_single_files_in_subfolders_are_listed_as_files(tmp_path: Path, models_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vae" / "cogvideo").mkdir(parents=True)
    (tmp_path / "CogVideo" / "loras").mkdir(parents=True)
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / "vae" / "cogvideo" / name).write_bytes(b"")
    (tmp_path / "CogVideo" / "loras" / "reward.safetensors").write_bytes(b"")
    (tmp_path / "CogVideo" / "top.safetensors").write_bytes(b"")
    shutil.copytree(models_dir / "vae" / "cogvideox_vae_tiny", tmp_path / "vae" / "tiny")
    monkeypatch.setattr(host.folders, "MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(host.folders, "SHIPPED", ())  # the user's folders only (shipped: test_host_tiny_world)
    assert host.list_models("vae") == ["cogvideo/a.safetensors", "cogvideo/b.safetensors", "tiny"]
    assert host.list_models("lora") == ["reward.safetensors"]  # models/CogVideo/loras
    assert host.list_models("transformer") == ["top.safetensors"]
    assert host.model_path("lora", "reward.safetensors", "lora") == tmp_path / "CogVideo" / "loras" / "reward.safetensors"


def test_unknown_model_names_the_input_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"model='nope'.*CogVideoX-2b"):
        node("CogVideoXModelLoader")("nope", "fp32")
    with pytest.raises(ValueError, match=r"model='\.\./\.\./etc'"):
        host.model_path("transformer", "../../etc", "model")


def test_folders_are_registered_with_folder_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    table: dict = {"vae": ([str(tmp_path / "vae")], {".safetensors"}), "CogVideo": (["/elsewhere"], set())}
    fp = SimpleNamespace(models_dir=str(tmp_path), folder_names_and_paths=table)
    fp.add_model_folder_path = lambda key, path: (table[key][0].append(path) if key in table
                                                  else table.__setitem__(key, ([path], set())))
    monkeypatch.setattr(host.folders, "_folder_paths", lambda: fp)
    host.register_folders()
    host.register_folders()  # idempotent
    for key in ("CogVideo", "CogVideoX_Fun", "Fun_Models", "diffusion_models", "text_encoders", "loras", "vae"):
        assert table[key][0].count(str(tmp_path / key)) == 1, key
        assert ".safetensors" in table[key][1], key
    assert table["cogvideox_loras"][0] == [str(tmp_path / "CogVideo" / "loras")]
    assert table["CogVideo"][0][0] == "/elsewhere"  # a yaml's path stays first


# ---- loaders ----------------------------------------------------------------------------------

def test_model_loader_detects_the_family(loaded: dict) -> None:
    model = loaded["model"]
    assert model.family.name == "2b" and model.dtype == torch.float32
    assert model.scheduler is not None and model.scheduler.snr_shift_scale == 3.0
    for root, family in (("CogVideoX-5b", "5b"), ("CogVideoX-5b-I2V", "5b-i2v"),
                         ("CogVideoX-Fun-V1.1-5b-InP", "fun-5b-inp"), ("cogvideox_2b_tiny.safetensors", "2b")):
        assert node("CogVideoXModelLoader")(root, "fp32")[0].family.name == family


def test_model_loader_fp8_storage_and_bf16() -> None:
    fp8, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "fp8_e4m3fn", "sdpa")
    weights = dict(fp8.model.named_parameters())
    assert weights["transformer_blocks.0.attn1.to_q.weight"].dtype == torch.float8_e4m3fn
    assert weights["proj_out.weight"].dtype == fp8.dtype == torch.float32  # auto compute on CPU
    bf16, _fps = node("CogVideoXModelLoader")("CogVideoX-2b", "bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, match", [
    ({"weight_dtype": "fp64"}, r"weight_dtype='fp64'.*bf16"),
    ({"attention": "flash"}, r"attention='flash'.*sdpa"),
    ({"family": "5b-i2v"}, r"family='5b-i2v' does not fit"),
    ({"family": "7b"}, r"family='7b'"),
])
def test_model_loader_refuses_bad_settings(kwargs: dict, match: str) -> None:
    args = {"model": "CogVideoX-2b", "weight_dtype": "fp32", **kwargs}
    with pytest.raises(ValueError, match=match):
        node("CogVideoXModelLoader")(**args)


def test_model_loader_refuses_weights_of_another_model(models_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "diffusion_models").mkdir()
    shutil.copy(models_dir / "vae" / "cogvideox_vae_tiny" / "diffusion_pytorch_model.safetensors",
                tmp_path / "diffusion_models" / "a_vae.safetensors")
    monkeypatch.setattr(host.folders, "MODELS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="a_vae.safetensors.*not a CogVideoX transformer"):
        node("CogVideoXModelLoader")("a_vae.safetensors", "fp32")


def test_vae_and_t5_loaders(loaded: dict) -> None:
    vae, = node("CogVideoXVAELoader")("cogvideox_vae_tiny", "fp32")
    assert vae.model.config.latent_channels == 16
    t5_file, = node("CogVideoXT5Loader")("t5_tiny.safetensors", "fp32")
    cond, = node("CogVideoXTextEncode")(t5_file, PROMPT, "blurry")
    # a single file's config is read off its shapes (T5-XXL's relative_attention_max_distance 128,
    # where the tiny tree's config.json says 32), so only the layout is compared
    assert cond.positive.shape == loaded["cond"].positive.shape and torch.isfinite(cond.positive).all()
    with pytest.raises(ValueError, match=r"vae='missing'"):
        node("CogVideoXVAELoader")("missing", "fp32")
    with pytest.raises(ValueError, match=r"dtype='fp8_e4m3fn'"):
        node("CogVideoXVAELoader")("cogvideox_vae_tiny", "fp8_e4m3fn")
    with pytest.raises(ValueError, match=r"t5='missing'"):
        node("CogVideoXT5Loader")("missing", "fp32")


# ---- LoRA -------------------------------------------------------------------------------------

def _merged(base: torch.Tensor, lora: dict, key: str, strength: float, kohya: bool) -> torch.Tensor:
    module = key[: -len(".weight")]
    if kohya:
        name = "lora_unet_" + module.replace(".", "_")
        up, down = lora[f"{name}.lora_up.weight"], lora[f"{name}.lora_down.weight"]
        scale = float(lora[f"{name}.alpha"]) / LORA_RANK
    else:
        up, down, scale = lora[f"transformer.{module}.lora_B.weight"], lora[f"transformer.{module}.lora_A.weight"], 1.0
    return base + strength * scale * (up @ down)


@pytest.mark.parametrize("kohya", [False, True], ids=["peft", "kohya"])
def test_lora_patches_weights_while_loaded_and_leaves_the_input_model(loaded: dict, kohya: bool) -> None:
    model = loaded["model"]
    key = "transformer_blocks.1.attn1.to_v.weight"
    base = model.model.state_dict()[key].clone()
    file = "tiny_kohya.safetensors" if kohya else "tiny_peft.safetensors"
    patched, = node("CogVideoXLoraLoader")(model, file, 0.7)
    assert patched.model is model.model and patched.loras == (f"{file}:0.7",) and model.loras == ()
    runtime = host.runtime(patched.patcher)
    host.load(runtime, patched.patcher)
    expected = _merged(base, lora_state("2b", kohya), key, 0.7, kohya)
    assert torch.allclose(patched.model.state_dict()[key], expected, atol=1e-6)
    host.load(host.runtime(model.patcher), model.patcher)  # the input model: original weights back
    assert torch.equal(model.model.state_dict()[key], base)


def test_loras_chain_and_change_the_video(loaded: dict) -> None:
    model, cond = loaded["model"], loaded["cond"]
    one, = node("CogVideoXLoraLoader")(model, "tiny_peft.safetensors", 1.0)
    two, = node("CogVideoXLoraLoader")(one, "tiny_kohya.safetensors", 0.5)
    assert len(two.loras) == 2 and len(two.patcher.patches["transformer_blocks.0.attn1.to_q.weight"]) == 2
    base = _sample(model, cond, _latent())["samples"]
    with_loras = _sample(two, cond, _latent())["samples"]
    assert not torch.allclose(base, with_loras)
    assert torch.equal(_sample(model, cond, _latent())["samples"], base)  # unpatched again
    assert node("CogVideoXLoraLoader")(model, "tiny_peft.safetensors", 0.0)[0] is model


def test_lora_of_another_model_is_refused(loaded: dict, models_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    (tmp_path / "loras").mkdir()
    save_file({"lora_unet_blocks_0_q.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_blocks_0_q.lora_up.weight": torch.zeros(8, 4)}, str(tmp_path / "loras" / "other.safetensors"))
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
               "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4)},
              str(tmp_path / "loras" / "wide.safetensors"))
    monkeypatch.setattr(host.folders, "MODELS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="no LoRA weight matches"):
        node("CogVideoXLoraLoader")(loaded["model"], "other.safetensors", 1.0)
    with pytest.raises(WeightsError, match=r"to_q.*does not fit the weight \[32, 32\]"):
        node("CogVideoXLoraLoader")(loaded["model"], "wide.safetensors", 1.0)
    with pytest.raises(ValueError, match=r"lora='gone.safetensors'"):
        node("CogVideoXLoraLoader")(loaded["model"], "gone.safetensors", 1.0)


# ---- text -------------------------------------------------------------------------------------

class FakeClip:
    """ComfyUI's CLIP interface over a T5 and its tokenizer, tokenizing the way ComfyUI's T5
    tokenizers do: (token, weight[, word id]) pairs, </s> then <pad> up to 77."""

    def __init__(self, t5, key: str = "t5xxl", triples: bool = False, extra_stream: bool = False) -> None:
        self.t5, self.key, self.triples, self.extra = t5, key, triples, extra_stream
        self.seen: list = []

    def tokenize(self, text: str) -> dict:
        ids = self.t5.tokenizer(text, add_special_tokens=True).input_ids
        ids = ids + [0] * max(0, 77 - len(ids))
        entries = [(i, 1.0, 1) if self.triples else (i, 1.0) for i in ids]
        out = {self.key: [entries]}
        if self.extra:
            out["l"] = [[(49406, 1.0)] + [(49407, 1.0)] * 76]
        return out

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False):
        self.seen.append(tokens)
        ids = torch.tensor([[e[0] for e in tokens[self.key][0]]])
        with torch.no_grad():
            return self.t5.patcher.model(ids)


def test_text_encode_is_the_core_encoding(loaded: dict) -> None:
    t5, cond = loaded["t5"], loaded["cond"]
    assert cond.positive.shape == (1, 226, 32) and cond.negative.shape == (1, 226, 32)
    assert torch.equal(cond.positive, encode_prompts(t5.patcher.model, t5.tokenizer, [PROMPT]))
    assert torch.equal(cond.negative, encode_prompts(t5.patcher.model, t5.tokenizer, ["blurry"]))


@pytest.mark.parametrize("prompt", [PROMPT, "a very long prompt about a cat " * 60, ""])
@pytest.mark.parametrize("triples", [False, True])
def test_clip_text_encode_applies_the_226_token_rule(loaded: dict, prompt: str, triples: bool) -> None:
    t5 = loaded["t5"]
    clip = FakeClip(t5, triples=triples, extra_stream=True)
    cond, = node("CogVideoXCLIPTextEncode")(clip, prompt, "")
    stream = clip.seen[0]["t5xxl"][0]
    assert len(stream) == 226 and len(stream[0]) == (3 if triples else 2)
    assert torch.equal(cond.positive, encode_prompts(t5.patcher.model, t5.tokenizer, [prompt]))


def test_clip_that_is_not_t5_is_refused(loaded: dict) -> None:
    with pytest.raises(ValueError, match=r"clip: a CLIP with token streams \['g', 'l'\]"):
        cogvideox_tokens({"l": [[(1, 1.0)]], "g": [[(1, 1.0)]]})

    class Short(FakeClip):
        def encode_from_tokens(self, tokens, return_pooled=False):
            return torch.zeros(1, 77, 32)

    with pytest.raises(ValueError, match=r"clip: encoded to shape \(1, 77, 32\)"):
        node("CogVideoXCLIPTextEncode")(Short(loaded["t5"]), PROMPT, "")


# ---- conditioning nodes -----------------------------------------------------------------------

def test_empty_latent() -> None:
    latent = node("CogVideoXEmptyLatent")(720, 480, 49, 2)[0]
    assert latent["samples"].shape == (2, 16, 13, 60, 90) and not latent["samples"].any()


@pytest.mark.parametrize("args, match", [
    ((100, 480, 49, 1), r"width=100 must be a multiple of 16.*96 or 112"),
    ((720, 488, 49, 1), r"height=488 must be a multiple of 16"),
    ((720, 480, 50, 1), r"frames=50 must be 4k\+1.*49 or 53"),
    ((720, 480, 49, 0), r"batch_size=0"),
])
def test_empty_latent_refuses_bad_sizes(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        node("CogVideoXEmptyLatent")(*args)


def test_conditioning_nodes_attach_inputs_and_the_vae(loaded: dict) -> None:
    cond, vae = loaded["cond"], loaded["vae"]
    i2v, latent = node("CogVideoXImageToVideo")(cond, vae, _image(2), WIDTH, HEIGHT, FRAMES)
    assert i2v.inputs.image.shape == (1, HEIGHT, WIDTH, 3) and i2v.vae is vae and i2v.positive is cond.positive
    assert latent["samples"].shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8)
    inp, _ = node("CogVideoXFunInpaint")(cond, vae, WIDTH, HEIGHT, FRAMES, video=_image(9),
                                         mask=torch.ones(HEIGHT, WIDTH), noise_aug=0.01)
    assert inp.inputs.mask.shape == (1, HEIGHT, WIDTH) and inp.inputs.noise_aug == 0.01
    rgba = torch.rand(FRAMES, HEIGHT, WIDTH, 4)
    ctl, _ = node("CogVideoXFunControl")(cond, vae, rgba, WIDTH, HEIGHT, FRAMES)
    assert ctl.inputs.control.shape[-1] == 3
    with pytest.raises(ValueError, match=r"image: expected IMAGE frames"):
        node("CogVideoXImageToVideo")(cond, vae, torch.rand(HEIGHT, WIDTH, 3), WIDTH, HEIGHT, FRAMES)
    with pytest.raises(ValueError, match=r"noise_aug=-0.5"):
        node("CogVideoXFunInpaint")(cond, vae, WIDTH, HEIGHT, FRAMES, start_images=_image(), noise_aug=-0.5)
    with pytest.raises(ValueError, match=r"mask: expected a MASK"):
        node("CogVideoXFunInpaint")(cond, vae, WIDTH, HEIGHT, FRAMES, video=_image(9), mask=torch.ones(4))
    with pytest.raises(ValueError, match=r"frames=10"):
        node("CogVideoXVideoToVideo")(cond, vae, _image(12), WIDTH, HEIGHT, 10)


# ---- sampler ----------------------------------------------------------------------------------

def test_sampler_is_the_core_pipeline(loaded: dict) -> None:
    model, cond = loaded["model"], loaded["cond"]
    out = _sample(model, cond, _latent(batch=2), seed=5, steps=3, sampler="ddim")["samples"]
    assert out.shape == (2, 16, 3, HEIGHT // 8, WIDTH // 8) and out.device.type == "cpu"
    models = Models(model.model, model.family, scheduler=model.scheduler)
    for i in range(2):
        request = GenerateRequest(frames=FRAMES, height=HEIGHT, width=WIDTH, steps=3, cfg=6.0, sampler="ddim",
                                  seed=5 + i, prompt_embeds=cond.positive, negative_embeds=cond.negative)
        assert torch.equal(out[i:i + 1], generate_latents(models, request))


def test_sampler_reports_progress_and_honours_interrupts(loaded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    made = []

    def spy(*patchers):
        made.append(node_host.RecordingRuntime(patchers))
        return made[-1]

    monkeypatch.setattr(host, "runtime", spy)
    _sample(loaded["model"], loaded["cond"], _latent(), steps=3)
    assert made[0].steps == [(1, 3), (2, 3), (3, 3)]
    made.clear()

    def stopping(*patchers):
        rt = node_host.RecordingRuntime(patchers)
        rt.interrupt_event.set()
        return rt

    monkeypatch.setattr(host, "runtime", stopping)
    with pytest.raises(Interrupted):
        _sample(loaded["model"], loaded["cond"], _latent(), steps=3)


@pytest.mark.parametrize("root, build", [
    ("CogVideoX-5b-I2V", lambda c, v: node("CogVideoXImageToVideo")(c, v, _image(), WIDTH, HEIGHT, FRAMES)),
    ("CogVideoX-Fun-V1.1-5b-InP", lambda c, v: node("CogVideoXFunInpaint")(
        c, v, WIDTH, HEIGHT, FRAMES, start_images=_image(), end_image=_image(seed=1))),
    ("CogVideoX-Fun-V1.1-2b-InP", lambda c, v: node("CogVideoXFunInpaint")(
        c, v, WIDTH, HEIGHT, FRAMES, video=_image(9), mask=torch.ones(9, HEIGHT, WIDTH))),
    ("CogVideoX-Fun-V1.1-2b-Control", lambda c, v: node("CogVideoXFunControl")(c, v, _image(9), WIDTH, HEIGHT, FRAMES)),
    ("CogVideoX-2b", lambda c, v: node("CogVideoXVideoToVideo")(c, v, _image(12), WIDTH, HEIGHT, FRAMES)),
], ids=["i2v", "fun-start-end", "fun-inpaint-video", "fun-control", "v2v"])
def test_sampler_runs_every_conditioning(root: str, build) -> None:
    model, vae, cond = _load(root)
    cond2, latent = build(cond, vae)
    denoise = 0.5 if root == "CogVideoX-2b" else 1.0
    out = _sample(model, cond2, latent, denoise=denoise)["samples"]
    assert out.shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8) and torch.isfinite(out).all()


def test_context_windows(loaded: dict) -> None:
    ctx, = node("CogVideoXContextOptions")(9, 4, "uniform", "flat")
    out = _sample(loaded["model"], loaded["cond"], _latent(17), context=ctx)["samples"]
    assert out.shape[2] == 5 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"overlap_frames=9.*length_frames=9"):
        node("CogVideoXContextOptions")(9, 9)
    with pytest.raises(ValueError, match=r"schedule='spiral'.*static"):
        node("CogVideoXContextOptions")(9, 4, "spiral")


def test_sampler_errors_name_the_input(loaded: dict) -> None:
    model, cond, vae = loaded["model"], loaded["cond"], loaded["vae"]
    with pytest.raises(ValueError, match=r"sampler='euler_a'.*ddim"):
        _sample(model, cond, _latent(), sampler="euler_a")
    with pytest.raises(ValueError, match=r"latent: .*\[B, C, T, H, W\].*\(1, 4, 8, 8\)"):
        _sample(model, cond, {"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(ValueError, match=r"denoise=0.5"):
        _sample(model, cond, _latent(), denoise=0.5)
    i2v, latent = node("CogVideoXImageToVideo")(cond, vae, _image(), WIDTH, HEIGHT, FRAMES)
    with pytest.raises(ValueError, match=r"image given to 2b"):
        _sample(model, i2v, latent)
    fun2b, fvae, fcond = _load("CogVideoX-Fun-V1.1-2b-InP")
    inp, latent = node("CogVideoXFunInpaint")(fcond, fvae, WIDTH, HEIGHT, 13, start_images=_image())
    with pytest.raises(ValueError, match=r"frames=13.*at most 9 frames"):
        _sample(fun2b, inp, latent)
    i2v_model, ivae, icond = _load("CogVideoX-5b-I2V")
    cond_i, latent = node("CogVideoXImageToVideo")(icond, ivae, _image(), 128, HEIGHT, FRAMES)
    with pytest.raises(ValueError, match=r"takes only 64x96"):
        _sample(i2v_model, cond_i, latent)


def _extend(model, vae, cond, video, frames=FRAMES, overlap=4, **kwargs):
    return node("CogVideoXExtendVideo")(model, cond, vae, video, frames, overlap, 3, 2, 6.0, "auto", **kwargs)[0]


def test_extend_video_chains_chunks_on_the_tail() -> None:
    model, vae, cond = _load("CogVideoX-Fun-V1.1-5b-InP")
    video = _image(FRAMES)
    longer = _extend(model, vae, cond, video)
    assert longer.shape == (FRAMES + FRAMES - 4, HEIGHT, WIDTH, 3)
    assert torch.equal(longer[:FRAMES - 4], video[:FRAMES - 4])  # before the overlap: untouched
    assert torch.equal(longer[FRAMES - 4], video[FRAMES - 4])  # crossfade weight 0 at the first overlap frame
    assert _extend(model, vae, cond, longer).shape[0] == FRAMES + 2 * (FRAMES - 4)
    with pytest.raises(ValueError, match=r"frames=9 must exceed overlap=9"):
        _extend(model, vae, cond, video, overlap=9)
    with pytest.raises(ValueError, match=r"frames=10 must be 4k\+1"):
        _extend(model, vae, cond, video, frames=10)


def test_extend_video_chunks_prompts_end_image_and_colour_match(monkeypatch: pytest.MonkeyPatch) -> None:
    root = "CogVideoX-Fun-V1.1-5b-InP"
    model, vae, cond = _load(root)
    t5, = node("CogVideoXT5Loader")(root, "fp32")
    seen: list = []
    real = PACK.nodes.sampling.extend_chain

    def spy(models, request, video, options, runtime=None, reference=None):
        seen.append(options)
        return real(models, request, video, options, runtime, reference)

    monkeypatch.setattr(PACK.nodes.sampling, "extend_chain", spy)
    video, end = _image(FRAMES), _image(seed=4)
    out = _extend(model, vae, cond, video, chunks=2, colour_match=0.5, end_image=end, t5=t5,
                  prompts="a fox runs\n\n  a fox sleeps  \n")
    assert out.shape[0] == FRAMES + 2 * (FRAMES - 4) and torch.equal(out[:FRAMES - 4], video[:FRAMES - 4])
    options = seen[0]
    assert (options.chunks, options.overlap, options.colour_match) == (2, 4, 0.5)
    assert torch.equal(options.end_image, end) and len(options.prompt_embeds) == 2
    plain = _extend(model, vae, cond, video, colour_match=0.0)  # as the reference: drifts, same chunk
    assert not torch.equal(plain, _extend(model, vae, cond, video))
    with pytest.raises(ValueError, match=r"prompts: 1 prompt line\(s\) given without t5"):
        _extend(model, vae, cond, video, prompts="a fox")
    with pytest.raises(ValueError, match=r"prompts: 1 prompt line\(s\) for chunks=2"):
        _extend(model, vae, cond, video, chunks=2, t5=t5, prompts="a fox")


def test_extend_video_with_i2v_and_refusals(loaded: dict) -> None:
    model, vae, cond = _load("CogVideoX-5b-I2V")
    assert _extend(model, vae, cond, _image(FRAMES), overlap=1).shape[0] == 2 * FRAMES - 1
    with pytest.raises(ValueError, match=r"overlap=4: 5b-i2v is conditioned on one start image"):
        _extend(model, vae, cond, _image(FRAMES))
    with pytest.raises(ValueError, match=r"2b \(t2v\) cannot continue a video"):
        _extend(loaded["model"], loaded["vae"], loaded["cond"], _image(FRAMES))


# ---- VAE nodes --------------------------------------------------------------------------------

def test_tiled_decode_equals_the_vae(loaded: dict) -> None:
    vae = loaded["vae"]
    z = torch.randn(2, 16, 3, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(0))
    images, = node("CogVideoXTiledDecode")(vae, {"samples": z}, True, 32, 0)
    assert images.shape == (2 * FRAMES, HEIGHT, WIDTH, 3) and 0 <= images.min() and images.max() <= 1
    with torch.no_grad():
        ref = (vae.model.decode(z) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).flatten(0, 1)
    assert torch.allclose(images, ref, atol=1e-5)
    fast, = node("CogVideoXTiledDecode")(vae, {"samples": z}, False, 32, 16)
    assert fast.shape == images.shape


def test_vae_nodes_refuse_bad_tiles_before_loading(loaded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the VAE was loaded before the settings were checked")

    monkeypatch.setattr(host, "load", no_load)
    vae, z = loaded["vae"], torch.zeros(1, 16, 3, HEIGHT // 8, WIDTH // 8)
    for exact, tile, overlap, match in ((True, 32, 16, r"overlap=16: exact=True"), (True, 12, 0, r"tile=12"),
                                        (False, 16, 16, r"overlap=16: the height overlap 16 must be below")):
        with pytest.raises(ValueError, match=match):
            node("CogVideoXTiledDecode")(vae, {"samples": z}, exact, tile, overlap)
        with pytest.raises(ValueError, match=match):
            node("CogVideoXTiledEncode")(vae, _image(FRAMES), exact, tile, overlap)


def test_vae_nodes_ask_the_host_for_room_before_the_pass(loaded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """ComfyUI unloads other models for the memory a node asks for at load: the VAE nodes ask
    for their tiled pass's store and a 256-pixel tile's buffers (as ComfyUI's own VAE does)."""
    from cogvideox_pack.cogvideox_core.vae.tiling import pass_memory

    asked = []
    real = host.load
    monkeypatch.setattr(host, "load", lambda rt, patcher, extra=0: asked.append(extra) or real(rt, patcher, extra))
    vae = loaded["vae"]
    z = torch.zeros(2, 16, 3, HEIGHT // 8, WIDTH // 8)
    node("CogVideoXTiledDecode")(vae, {"samples": z}, True, 0, 0)
    node("CogVideoXTiledEncode")(vae, _image(FRAMES), True, 0, 0)
    cfg = vae.model.config
    assert asked == [pass_memory(cfg, 2, (HEIGHT, WIDTH), vae.dtype),
                     pass_memory(cfg, 1, (HEIGHT, WIDTH), vae.dtype, encode=True)]
    assert asked[0] > asked[1] > 0


def test_tiled_encode_equals_the_vae(loaded: dict) -> None:
    vae = loaded["vae"]
    frames = _image(FRAMES)
    latent, = node("CogVideoXTiledEncode")(vae, frames, True, 0, 0)
    with torch.no_grad():
        ref = vae.model.encode((frames * 2 - 1).permute(3, 0, 1, 2)[None]).mode()
    assert latent["samples"].shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8)
    assert torch.allclose(latent["samples"], ref, atol=1e-5)
    with pytest.raises(ValueError, match=r"images \(frame count\)=10 must be 4k\+1"):
        node("CogVideoXTiledEncode")(vae, _image(10), True, 0, 0)


# ---- video ------------------------------------------------------------------------------------

def _meta(path: Path) -> tuple[int, tuple[int, int], float]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"]), meta["fps"]


def test_save_video_writes_an_mp4_shown_in_the_ui(loaded: dict, folders: Path) -> None:
    images = _image(FRAMES)
    out = node("CogVideoXSaveVideo")(images, "clips/test", 0.0, loaded["model"])
    item = out["ui"]["images"][0]
    assert out["ui"]["animated"] == (True,) and item["type"] == "output" and item["subfolder"] == "clips"
    path = folders / "output" / "clips" / item["filename"]
    assert _meta(path) == (FRAMES, (WIDTH, HEIGHT), 8.0)
    one_five = dataclasses.replace(loaded["model"], family=dataclasses.replace(loaded["model"].family, fps=16))
    second = node("CogVideoXSaveVideo")(images, "clips/test", 0.0, one_five)["ui"]["images"][0]
    assert second["filename"] != item["filename"] and _meta(path.parent / second["filename"])[2] == 16.0
    third = node("CogVideoXSaveVideo")(images, "x", 12.0)["ui"]["images"][0]
    assert _meta(folders / "output" / third["filename"])[2] == 12.0
    with pytest.raises(ValueError, match=r"frame_rate=-1"):
        node("CogVideoXSaveVideo")(images, "x", -1.0)
    with pytest.raises(ValueError, match=r"images: expected IMAGE frames"):
        node("CogVideoXSaveVideo")(torch.rand(3, 4), "x", 8.0)


def test_load_video(folders: Path) -> None:
    (folders / "input").mkdir()
    write_mp4(_image(12), folders / "input" / "clip.mp4")
    assert NODES["CogVideoXLoadVideo"].INPUT_TYPES()["required"]["video"][0] == ["clip.mp4"]
    frames, count, fps = node("CogVideoXLoadVideo")("clip.mp4", 9)
    assert frames.shape == (9, HEIGHT, WIDTH, 3) and count == 9 and fps == 8.0
    assert node("CogVideoXLoadVideo")("clip.mp4", 0)[1] == 12
    with pytest.raises(ValueError, match=r"video='nope.mp4'.*clip.mp4"):
        node("CogVideoXLoadVideo")("nope.mp4", 9)


# ---- the host adapter: plain torch, and a stand-in ComfyUI -------------------------------------

def test_without_comfyui_models_move_to_a_device_on_plain_torch(loaded: dict, capsys) -> None:
    """The pack's own fallback (the other tests stand in for it): a model and its devices, the
    core's runtime on the load device; loading moves the model there, progress is silent."""
    vae = loaded["vae"].model
    patcher = host.compute.wrap(vae, "vae")
    assert patcher.model is vae and patcher.offload_device == torch.device("cpu")
    assert not hasattr(patcher, "add_patches")  # LoRA patching is ComfyUI's
    rt = host.compute.runtime(patcher)
    assert type(rt) is TorchRuntime and rt.device == patcher.load_device
    assert host.load(rt, patcher) is vae and next(vae.parameters()).device.type == rt.device.type
    rt.progress(1, 2, None)
    rt.check_interrupt()
    assert capsys.readouterr().err == ""



class FakeInterrupt(Exception):
    pass


def fake_comfy(flag: list[bool], loads: list) -> SimpleNamespace:
    def throw() -> None:
        if flag[0]:
            flag[0] = False
            raise FakeInterrupt()

    class Bar:
        def __init__(self, total):
            self.total, self.calls = total, []
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.calls.append((value, total, preview))

    bars: list = []
    mm = SimpleNamespace(
        InterruptProcessingException=FakeInterrupt, throw_exception_if_processing_interrupted=throw,
        load_models_gpu=lambda models, memory_required=0: loads.append((models, memory_required)),
        get_free_memory=lambda dev=None: 123, intermediate_device=lambda: torch.device("cpu"),
        get_torch_device=lambda: torch.device("cpu"), unet_offload_device=lambda: torch.device("cpu"))
    return SimpleNamespace(mm=mm, utils=SimpleNamespace(ProgressBar=Bar), bars=bars)


def test_comfy_runtime_maps_the_protocol(loaded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    flag, loads = [False], []
    fake = fake_comfy(flag, loads)
    monkeypatch.setattr(host.compute, "comfy", lambda: fake)
    host.compute._host_interrupted.cache_clear()
    patcher = loaded["model"].patcher
    rt = host.compute.ComfyRuntime([patcher])
    rt.load(patcher.model, 1000)
    assert loads == [([patcher], 1000)] and rt.free_memory() == 123
    rt.progress(1, 4, None)
    rt.progress(2, 4, None)
    assert fake.bars[0].calls == [(1, 4, None), (2, 4, None)]
    flag[0] = True
    with pytest.raises(Interrupted) as info:
        rt.check_interrupt()
    assert isinstance(info.value, FakeInterrupt)  # ComfyUI sees its own interrupt
    host.compute._host_interrupted.cache_clear()


def test_latent_preview_is_a_jpeg_of_the_middle_frame() -> None:
    kind, image, size = host.previews.latent_preview(torch.randn(1, 16, 3, 8, 12))
    assert kind == "JPEG" and image.size == (12, 8) and size == 512
