"""Start a real ComfyUI (``--cpu``) and import the pack into it as ComfyUI imports a custom node
folder: the common head of the scripts that run inside a host's own Python (``host_contract.py``,
``host_compile.py``)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def boot(comfy_dir: Path, models: Path, folders: tuple[str, ...]) -> ModuleType:
    """ComfyUI at ``comfy_dir`` with its args parsed as ``--cpu`` (comfy.* asserts on a missing GPU
    without it), ``models``/<key> registered for each key of ``folders``; the pack as module
    ``cogvideox_pack``."""
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing()  # as main.py does: read --cpu
    import folder_paths

    for key in folders:
        folder_paths.add_model_folder_path(key, str(models / key))
    spec = importlib.util.spec_from_file_location("cogvideox_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["cogvideox_pack"] = pack
    spec.loader.exec_module(pack)  # type: ignore[union-attr]
    return pack
