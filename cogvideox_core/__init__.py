"""cogvideox_core: the CogVideoX models, VAE, conditioning and samplers on plain torch.

Never imports ComfyUI. The host-facing node layer lives in ``nodes/``.
"""
from __future__ import annotations

__version__ = "0.1.0"
