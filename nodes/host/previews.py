"""Latent previews for ComfyUI's progress bar: whether the user wants them, and a data-free
image of the predicted clean latents (no per-model colour factors to keep up to date)."""
from __future__ import annotations

from typing import Any

import torch


def enabled() -> bool:
    """Whether ComfyUI runs with a preview method (``--preview-method``) other than none."""
    try:
        from comfy.cli_args import LatentPreviewMethod, args
    except Exception:
        return False
    return args.preview_method != LatentPreviewMethod.NoPreviews


def latent_preview(x0: torch.Tensor, max_size: int = 512) -> Any:
    """A ("JPEG", PIL image, max size) preview of predicted clean latents [B, C, F, H, W] (what
    the core's sampler callback hands out): the middle frame's three strongest principal
    components as RGB. False colours, true structure."""
    from PIL import Image

    frame = x0[0, :, x0.shape[2] // 2].float().cpu()  # [C, H, W]
    c, h, w = frame.shape
    flat = frame.reshape(c, -1).T  # [H*W, C]
    flat = flat - flat.mean(0)
    _u, _s, v = torch.linalg.svd(flat, full_matrices=False)
    comps = v[:3]  # [<=3, C]
    comps = comps * comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()  # stable signs
    rgb = (flat @ comps.T).T.reshape(-1, h, w)  # [<=3, H, W]
    rgb = torch.cat([rgb, rgb.new_zeros(3 - rgb.shape[0], h, w)]) if rgb.shape[0] < 3 else rgb
    rgb = rgb / (rgb.abs().amax(dim=(1, 2), keepdim=True) + 1e-6)
    img = ((rgb + 1) * 127.5).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return ("JPEG", Image.fromarray(img), max_size)
