"""A ComfyUI ``models`` folder of tiny random CogVideoX models in the real on-disk formats.

Written with diffusers' and transformers' own ``save_pretrained`` (so the files are what the
Hub trees hold), named as the released models are, in the folders the pack searches:

    CogVideo/CogVideoX-2b, CogVideoX-5b, CogVideoX-5b-I2V      diffusers trees (transformer,
    CogVideoX_Fun/CogVideoX-Fun-V1.1-5b-InP, ...-2b-InP         vae, text_encoder, tokenizer,
    CogVideoX_Fun/CogVideoX-Fun-V1.1-2b-Control                 scheduler)
    diffusion_models/cogvideox_2b_tiny.safetensors              one transformer file
    vae/cogvideox_vae_tiny/                                     a vae/ folder on its own
    text_encoders/t5_tiny.safetensors                           one T5 encoder file
    loras/tiny_peft.safetensors, loras/tiny_kohya.safetensors   LoRAs of the 2B transformer

Transformers are 2 layers of 2 heads x 16 with the trained grid shrunk to 9 frames of 64x96
(so 5B-I2V's fixed size and Fun-2B's frame limit are tiny too); run them at 64x96, 9 frames.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_models import ref_transformer, ref_vae, scheduler_kwargs, tiny_t5  # noqa: E402

from cogvideox_core.tiny import tiny_family  # noqa: E402
from cogvideox_core.loading.text import SHIPPED_TOKENIZER  # noqa: E402

ROOTS = {  # folder key / released name -> family
    "CogVideo/CogVideoX-2b": "2b",
    "CogVideo/CogVideoX-5b": "5b",
    "CogVideo/CogVideoX-5b-I2V": "5b-i2v",
    "CogVideoX_Fun/CogVideoX-Fun-V1.1-5b-InP": "fun-5b-inp",
    "CogVideoX_Fun/CogVideoX-Fun-V1.1-2b-InP": "fun-2b-inp",
    "CogVideoX_Fun/CogVideoX-Fun-V1.1-2b-Control": "fun-2b-control",
}
HEIGHT, WIDTH, FRAMES = 64, 96, 9  # the tiny models' trained grid, in pixels
LORA_RANK = 4


def write_root(root: Path, family_name: str, seed: int = 0) -> Path:
    """A diffusers tree of a tiny ``family_name`` model at ``root``."""
    family = tiny_family(family_name)
    ref_transformer(family, seed).save_pretrained(root / "transformer")
    ref_vae(family, seed).save_pretrained(root / "vae")
    tiny_t5(seed).save_pretrained(root / "text_encoder")
    shutil.copytree(SHIPPED_TOKENIZER, root / "tokenizer", dirs_exist_ok=True)
    sched = {"_class_name": "CogVideoXDDIMScheduler", **scheduler_kwargs(family.snr_shift_scale)}
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline"}))
    return root


def lora_state(family_name: str, kohya: bool, seed: int = 3) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every attention projection of the tiny model, in one of two layouts."""
    shapes = {k: v.shape for k, v in ref_transformer(tiny_family(family_name)).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if not key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")):
            continue
        module = key[: -len(".weight")]
        down = torch.randn(LORA_RANK, shape[1], generator=gen) * 0.1
        up = torch.randn(shape[0], LORA_RANK, generator=gen) * 0.1
        if kohya:
            name = "lora_unet_" + module.replace(".", "_")
            out.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(float(LORA_RANK / 2))})
        else:
            out.update({f"transformer.{module}.lora_A.weight": down, f"transformer.{module}.lora_B.weight": up})
    return out


def write_models(models: Path) -> Path:
    """Every tiny model of the module docstring under ``models``; returns ``models``."""
    for rel, family in ROOTS.items():
        write_root(models / rel, family)
    family = tiny_family("2b")
    save_file({k: v.contiguous() for k, v in ref_transformer(family, 0).state_dict().items()},
              str(_mkdir(models / "diffusion_models") / "cogvideox_2b_tiny.safetensors"))
    ref_vae(family, 0).save_pretrained(models / "vae" / "cogvideox_vae_tiny")
    save_file({k: v.contiguous() for k, v in tiny_t5(0).state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(_mkdir(models / "text_encoders") / "t5_tiny.safetensors"))
    save_file(lora_state("2b", kohya=False), str(_mkdir(models / "loras") / "tiny_peft.safetensors"))
    save_file(lora_state("2b", kohya=True), str(models / "loras" / "tiny_kohya.safetensors"))
    return models


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def extra_model_paths(models: Path, path: Path) -> Path:
    """A ComfyUI ``extra_model_paths.yaml`` pointing every folder the pack uses at ``models``."""
    keys = ["CogVideo", "CogVideoX_Fun", "diffusion_models", "vae", "text_encoders", "loras"]
    lines = ["cogvideox_tiny:", f"    base_path: {models}"] + [f"    {k}: {k}" for k in keys]
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(write_models(Path(sys.argv[1])))
