"""The node layer: collects every node file's ``NODES`` into ComfyUI's mappings and registers
the pack's model folders with ``folder_paths`` (no disk scan, no model code run at import)."""
from __future__ import annotations

from . import conditioning, host, loaders, sampling, text, torch_compile, vae, video

_FILES = (loaders, torch_compile, text, conditioning, sampling, vae, video)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _FILES:
    for _name, (_cls, _display) in _module.NODES.items():
        NODE_CLASS_MAPPINGS[_name] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_name] = _display

host.register_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
