"""Writes ``workflows/*.json`` (ComfyUI's UI format) from the specs below.

Widget order and defaults come from the nodes' own ``INPUT_TYPES`` (required, then optional,
as the editor lays them out; a seed widget carries the editor's extra "control after generate"
value), so a workflow cannot drift from the node definitions: ``tests/test_nodes.py`` checks
that the shipped files equal what this script writes. Run ``python tests/make_workflows.py``
after changing a node's inputs or a spec.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
CORE_NODES = {  # class -> (outputs [(name, type)], socket inputs [(name, type)])
    "LoadImage": ([("IMAGE", "IMAGE"), ("MASK", "MASK")], []),
    # ComfyUI's own video nodes (comfy_extras/nodes_video.py; not in ComfyUI before 2025)
    "LoadVideo": ([("VIDEO", "VIDEO")], []),
    "GetVideoComponents": ([("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")], [("video", "VIDEO")]),
    "CreateVideo": ([("VIDEO", "VIDEO")], [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
    "SaveVideo": ([], [("video", "VIDEO")]),
}
CORE_WIDGET_SOCKETS = {("CreateVideo", "fps")}  # widgets a link can feed: the editor marks their socket
PROMPT = ("A panda, dressed in a small red jacket and a tiny hat, sits on a wooden stool in a serene "
          "bamboo forest, strumming a miniature acoustic guitar. Sunlight filters through the tall "
          "bamboo, casting a gentle glow; other pandas gather and watch.")
NEGATIVE = "blurry, low quality, distorted, watermark"


def load_pack(name: str = "cogvideox_pack") -> Any:
    """The repository root imported as a package (as ComfyUI imports a custom node folder)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@dataclass
class N:
    """One node of a spec: ``links`` maps an input name to (source node key, output slot)."""

    key: str
    type: str
    col: int
    row: int
    widgets: dict[str, Any] | list[Any] = field(default_factory=dict)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    title: str | None = None


def _is_widget(spec: tuple) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _pack_node_io(cls: Any) -> tuple[list[tuple[str, tuple]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(widget inputs, socket inputs, outputs) of a pack node class."""
    spec = cls.INPUT_TYPES()
    ordered = [*spec.get("required", {}).items(), *spec.get("optional", {}).items()]
    widgets = [(k, v) for k, v in ordered if _is_widget(v)]
    sockets = [(k, v[0]) for k, v in ordered if not _is_widget(v)]
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return widgets, sockets, list(zip(names, cls.RETURN_TYPES))


def _widget_values(node: N, widgets: list[tuple[str, tuple]]) -> list[Any]:
    given = dict(node.widgets)  # type: ignore[arg-type]
    values: list[Any] = []
    for name, spec in widgets:
        opts = spec[1] if len(spec) > 1 else {}
        if name in given:
            value = given.pop(name)
        elif "default" in opts:
            value = opts["default"]
        elif isinstance(spec[0], list) and spec[0]:
            value = spec[0][0]
        else:
            raise ValueError(f"{node.key}: widget {name!r} needs a value")
        values.append(value)
        if name == "seed" or opts.get("control_after_generate"):
            values.append("fixed")
    if given:
        raise ValueError(f"{node.key}: {sorted(given)} are not widgets of {node.type}")
    return values


def build(nodes: list[N], note: str) -> dict[str, Any]:
    """The UI-format workflow of ``nodes`` plus a Note node with ``note``."""
    mappings = load_pack().NODE_CLASS_MAPPINGS
    ids = {n.key: i + 2 for i, n in enumerate(nodes)}
    io = {}
    for n in nodes:
        if n.type in CORE_NODES:
            outs, socks = CORE_NODES[n.type]
            io[n.key] = ([], socks, outs)
        else:
            io[n.key] = _pack_node_io(mappings[n.type])
    links, out_links = [], {}
    for n in nodes:
        for name, (src, slot) in n.links.items():
            link_id = len(links) + 1
            links.append([link_id, ids[src], slot, ids[n.key], _socket_index(io[n.key][1], name, n),
                          io[src][2][slot][1]])
            out_links.setdefault((src, slot), []).append(link_id)
    ui_nodes = [_note(note)]
    for order, n in enumerate(nodes):
        widgets, sockets, outputs = io[n.key]
        link_of = {name: next(l[0] for l in links if l[3] == ids[n.key] and l[4] == i)
                   for i, (name, _t) in enumerate(sockets) if name in n.links}
        ui_nodes.append({
            "id": ids[n.key], "type": n.type, "pos": [40 + 380 * n.col, 60 + 260 * n.row],
            "size": [340, 200], "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": name, "type": t, "link": link_of.get(name),
                        **({"widget": {"name": name}} if (n.type, name) in CORE_WIDGET_SOCKETS else {})}
                       for name, t in sockets],
            "outputs": [{"name": name, "type": t, "links": out_links.get((n.key, i), []), "slot_index": i}
                        for i, (name, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": n.type},
            "widgets_values": list(n.widgets) if n.type in CORE_NODES else _widget_values(n, widgets),
            **({"title": n.title} if n.title else {}),
        })
    return {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _socket_index(sockets: list[tuple[str, str]], name: str, node: N) -> int:
    for i, (socket, _t) in enumerate(sockets):
        if socket == name:
            return i
    raise ValueError(f"{node.key}: {node.type} has no socket input {name!r}")


def _note(text: str) -> dict[str, Any]:
    return {"id": 1, "type": "Note", "pos": [40, -340], "size": [760, 300], "flags": {}, "order": 99,
            "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653"}


# ---- the specs ------------------------------------------------------------------------------

def _loaders(root: str, dtype: str = "auto") -> list[N]:
    return [N("model", "CogVideoXModelLoader", 0, 0, {"model": root, "weight_dtype": dtype}),
            N("vae", "CogVideoXVAELoader", 0, 1, {"vae": root}),
            N("t5", "CogVideoXT5Loader", 0, 2, {"t5": root}),
            N("text", "CogVideoXTextEncode", 1, 2, {"positive": PROMPT, "negative": NEGATIVE},
              {"t5": ("t5", 0)})]


def _tail(latent: tuple[str, int], cond: tuple[str, int], sampler: dict[str, Any],
          extra_links: dict[str, tuple[str, int]] | None = None) -> list[N]:
    return [N("sampler", "CogVideoXSampler", 2, 0, sampler,
              {"model": ("model", 0), "conditioning": cond, "latent": latent, **(extra_links or {})}),
            N("decode", "CogVideoXTiledDecode", 3, 0, {}, {"vae": ("vae", 0), "latent": ("sampler", 0)}),
            N("save", "CogVideoXSaveVideo", 3, 1, {"filename_prefix": "CogVideoX"},
              {"images": ("decode", 0), "model": ("model", 0)})]


def _files(root: str, folder: str = "CogVideo") -> str:
    return (f"Weights: download the diffusers repository {root} (transformer/, vae/, text_encoder/, "
            f"tokenizer/, scheduler/) into ComfyUI/models/{folder}/{root}/. The model, VAE and T5 loaders "
            f"all pick the folder '{root}'. Or use single files: a transformer .safetensors in "
            "models/diffusion_models, the VAE in models/vae, t5xxl_fp16.safetensors (or fp8) in "
            "models/text_encoders.")


def text_to_video(root: str, sampler: str, what: str) -> tuple[list[N], str]:
    nodes = [*_loaders(root), N("latent", "CogVideoXEmptyLatent", 1, 0, {"width": 720, "height": 480, "frames": 49}),
             *_tail(("latent", 0), ("text", 0), {"seed": 42, "steps": 50, "cfg": 6.0, "sampler": sampler})]
    note = (f"CogVideoX {what} text-to-video, 720x480, 49 frames at 8 fps. " + _files(root)
            + " The 2B model runs in fp16/bf16; 5B needs bf16 (fp16 gives black video).")
    return nodes, note


def image_to_video() -> tuple[list[N], str]:
    root = "CogVideoX-5b-I2V"
    nodes = [*_loaders(root), N("image", "LoadImage", 1, 0, ["start_frame.png", "image"]),
             N("i2v", "CogVideoXImageToVideo", 1, 1, {"width": 720, "height": 480, "frames": 49},
               {"conditioning": ("text", 0), "vae": ("vae", 0), "image": ("image", 0)}),
             *_tail(("i2v", 1), ("i2v", 0), {"seed": 42, "steps": 50, "cfg": 6.0})]
    note = ("CogVideoX-5B-I2V image-to-video: the loaded image becomes frame 0 (it is centre-cropped to "
            "3:2 and resized to 720x480, the only size this model takes). " + _files(root))
    return nodes, note


def fun_start_end() -> tuple[list[N], str]:
    root = "CogVideoX-Fun-V1.1-5b-InP"
    nodes = [*_loaders(root), N("start", "LoadImage", 1, 0, ["start_frame.png", "image"], title="Start frame"),
             N("end", "LoadImage", 1, 1, ["end_frame.png", "image"], title="End frame"),
             N("inp", "CogVideoXFunInpaint", 2, 1, {"width": 672, "height": 384, "frames": 49},
               {"conditioning": ("text", 0), "vae": ("vae", 0), "start_images": ("start", 0),
                "end_image": ("end", 0)}),
             *_tail(("inp", 1), ("inp", 0), {"seed": 42, "steps": 50, "cfg": 6.0})]
    note = ("CogVideoX-Fun InP: a video that starts at the first image and ends at the second. "
            + _files(root, "CogVideoX_Fun") + " models/Fun_Models works too.")
    return nodes, note


def long_video() -> tuple[list[N], str]:
    root = "CogVideoX-5b"
    nodes = [*_loaders(root), N("latent", "CogVideoXEmptyLatent", 1, 0, {"width": 720, "height": 480, "frames": 97}),
             N("context", "CogVideoXContextOptions", 1, 1, {"length_frames": 49, "overlap_frames": 16}),
             *_tail(("latent", 0), ("text", 0), {"seed": 42, "steps": 50, "cfg": 6.0},
                    {"context_options": ("context", 0)})]
    note = ("Long video with context windows: 97 frames from a model trained on 49. The sampler denoises "
            "49-frame windows overlapping by 16 frames and blends them every step. " + _files(root))
    return nodes, note


def video_to_video() -> tuple[list[N], str]:
    root = "CogVideoX-5b"
    nodes = [*_loaders(root), N("video", "CogVideoXLoadVideo", 1, 0, {"video": "input_video.mp4", "frame_limit": 49}),
             N("v2v", "CogVideoXVideoToVideo", 1, 1, {"width": 720, "height": 480, "frames": 49},
               {"conditioning": ("text", 0), "vae": ("vae", 0), "video": ("video", 0)}),
             *_tail(("v2v", 1), ("v2v", 0), {"seed": 42, "steps": 50, "cfg": 6.0, "denoise": 0.7})]
    note = ("Video-to-video: put your video in ComfyUI/input (input_video.mp4 here); denoise sets how much "
            "changes (0.7: the motion stays, the look follows the prompt). " + _files(root))
    return nodes, note


def video_to_video_core_nodes() -> tuple[list[N], str]:
    root = "CogVideoX-5b"
    nodes = [*_loaders(root), N("video", "LoadVideo", 1, 0, ["input_video.mp4", "image"]),
             N("components", "GetVideoComponents", 1, 1, [], {"video": ("video", 0)}),
             N("v2v", "CogVideoXVideoToVideo", 2, 1, {"width": 720, "height": 480, "frames": 49},
               {"conditioning": ("text", 0), "vae": ("vae", 0), "video": ("components", 0)}),
             N("sampler", "CogVideoXSampler", 2, 0, {"seed": 42, "steps": 50, "cfg": 6.0, "denoise": 0.7},
               {"model": ("model", 0), "conditioning": ("v2v", 0), "latent": ("v2v", 1)}),
             N("decode", "CogVideoXTiledDecode", 3, 0, {}, {"vae": ("vae", 0), "latent": ("sampler", 0)}),
             N("create", "CreateVideo", 3, 1, [8.0], {"images": ("decode", 0), "fps": ("components", 2)}),
             N("save", "SaveVideo", 4, 0, ["video/CogVideoX", "mp4", "h264"], {"video": ("create", 0)})]
    note = ("Video-to-video with ComfyUI's own video nodes (Load Video, Get Video Components, Create Video, "
            "Save Video: a ComfyUI from 2025 on): put your video in ComfyUI/input (input_video.mp4 here). "
            "The first 'frames' frames (4k+1) are used and the saved video keeps the source's frame rate. "
            "denoise sets how much changes (0.7: the motion stays, the look follows the prompt). "
            + _files(root))
    return nodes, note


def chained_extension() -> tuple[list[N], str]:
    root = "CogVideoX-Fun-V1.1-5b-InP"
    sampling = {"seed": 42, "steps": 50, "cfg": 6.0}
    nodes = [*_loaders(root),
             N("inp", "CogVideoXFunInpaint", 1, 0, {"width": 672, "height": 384, "frames": 49},
               {"conditioning": ("text", 0), "vae": ("vae", 0)}),
             N("sampler", "CogVideoXSampler", 2, 0, sampling,
               {"model": ("model", 0), "conditioning": ("inp", 0), "latent": ("inp", 1)}),
             N("decode", "CogVideoXTiledDecode", 3, 0, {}, {"vae": ("vae", 0), "latent": ("sampler", 0)}),
             *[N(f"extend{i}", "CogVideoXExtendVideo", 3 + i, 1, {**sampling, "seed": 42 + i, "frames": 49,
                                                                  "overlap_frames": 4},
                 {"model": ("model", 0), "conditioning": ("text", 0), "vae": ("vae", 0),
                  "images": ("decode" if i == 1 else f"extend{i - 1}", 0)}) for i in (1, 2)],
             N("save", "CogVideoXSaveVideo", 5, 0, {"filename_prefix": "CogVideoX_extended"},
               {"images": ("extend2", 0), "model": ("model", 0)})]
    note = ("Chained extension with CogVideoX-Fun InP: a 49-frame text-to-video clip, then two chunks of 49 "
            "frames that each start from the last 4 frames of the video so far (crossfaded): 139 frames. "
            "Each chunk's colours are matched to the first chunk's (colour_match 1; 0 lets them drift, as "
            "in the reference). For longer videos raise chunks on an Extend node or add more nodes; "
            "one prompt per chunk goes in 'prompts' (one per line, with a T5 loader on 't5'), and "
            "'end_image' sets the last chunk's final frame. "
            + _files(root, "CogVideoX_Fun"))
    return nodes, note


BATCH_PREFIX = "A fitness coach in a bright gym,"
BATCH_PROMPTS = ("demonstrates a squat", "demonstrates a deadlift", "demonstrates a bench press", "does a pull-up")


def batch_prompts() -> tuple[list[N], str]:
    root = "CogVideoX-5b"
    text = N("text", "CogVideoXTextEncode", 1, 2,
             {"positive": "\n".join(BATCH_PROMPTS), "negative": NEGATIVE, "prompts_per_line": True,
              "prefix": BATCH_PREFIX}, {"t5": ("t5", 0)})
    nodes = [*_loaders(root)[:3], text,
             N("latent", "CogVideoXEmptyLatent", 1, 0, {"width": 720, "height": 480, "frames": 49, "batch_size": 1}),
             N("sampler", "CogVideoXSampler", 2, 0, {"seed": 42, "steps": 50, "cfg": 6.0, "sampler": "dpm"},
               {"model": ("model", 0), "conditioning": ("text", 0), "latent": ("latent", 0)}),
             N("decode", "CogVideoXTiledDecodeList", 3, 0, {}, {"vae": ("vae", 0), "latent": ("sampler", 0)}),
             N("save", "CogVideoXSaveVideo", 3, 1, {"filename_prefix": "CogVideoX_batch/coach"},
               {"images": ("decode", 0), "model": ("model", 0)})]
    note = (f"Batch of prompts with CogVideoX-5B: one video per line of the prompt box ({len(BATCH_PROMPTS)} "
            f"here), each with the prefix '{BATCH_PREFIX}' before it (prompts_per_line on). Every prompt is "
            "encoded once, the videos are sampled in batches as large as memory allows (each equal to a "
            "run of its prompt alone with the same seed) and Tiled Decode (video list) keeps them apart: "
            "Save Video writes one numbered mp4 per prompt to output/CogVideoX_batch/. A batch size above "
            "1 makes that many videos per prompt (seeds seed, seed + 1, ...). " + _files(root))
    return nodes, note


TINY_WORLD_T2V_PROMPT = "a blue square moving left on a white background"
TINY_WORLD_INP_PROMPT = "a red circle moving right on a white background"
TINY_WORLD_IMAGES = ("tiny_world_start_frame.png", "tiny_world_end_frame.png")  # in workflows/: frames 0 and 16
TINY_WORLD_SIZE = {"width": 96, "height": 64, "frames": 17}  # the trained clips
TINY_WORLD_SAMPLING = {"seed": 0, "steps": 20, "cfg": 6.0}


def _tiny_world_names() -> tuple[str, str]:
    """(text-to-video, Fun InP) dropdown names of the shipped tiny-world models."""
    load_pack()
    folders = sys.modules["cogvideox_pack.nodes.host.folders"]
    return folders.TINY_WORLD_NAME, folders.TINY_WORLD_INP_NAME


def _tiny_world(model: str, prompt: str) -> list[N]:
    """Loaders of a shipped tiny-world model (with the shipped VAE and T5) and the prompt."""
    shared = _tiny_world_names()[0]
    return [N("model", "CogVideoXModelLoader", 0, 0, {"model": model}),
            N("vae", "CogVideoXVAELoader", 0, 1, {"vae": shared}),
            N("t5", "CogVideoXT5Loader", 0, 2, {"t5": shared}),
            N("text", "CogVideoXTextEncode", 1, 2, {"positive": prompt, "negative": ""}, {"t5": ("t5", 0)})]


def _tiny_world_note(what: str) -> str:
    return (f"Tiny-world demo, {what}: tiny models trained on a synthetic world of one coloured shape "
            "moving on a white background, 96x64, 17 frames at 8 fps, 20 steps: seconds on a CPU. They ship "
            "inside the pack (cogvideox_core/data/tiny_world): the loaders list them last, named "
            "'... (shipped demo)'; nothing to download, nothing to put in ComfyUI/models/. Prompts take "
            "the form 'a <red|green|blue> <circle|square> moving <left|right|up|down> on a white "
            "background': the models know nothing else.")


def tiny_world_text_to_video() -> tuple[list[N], str]:
    tail = _tail(("latent", 0), ("text", 0), TINY_WORLD_SAMPLING)
    tail[-1].widgets = {"filename_prefix": "CogVideoX_tiny_world", "frame_rate": 8.0}
    nodes = [*_tiny_world(_tiny_world_names()[0], TINY_WORLD_T2V_PROMPT),
             N("latent", "CogVideoXEmptyLatent", 1, 0, TINY_WORLD_SIZE), *tail]
    return nodes, _tiny_world_note("text-to-video")


def tiny_world_start_end() -> tuple[list[N], str]:
    start, end = TINY_WORLD_IMAGES
    tail = _tail(("inp", 1), ("inp", 0), TINY_WORLD_SAMPLING)
    tail[-1].widgets = {"filename_prefix": "CogVideoX_tiny_world_inp", "frame_rate": 8.0}
    nodes = [*_tiny_world(_tiny_world_names()[1], TINY_WORLD_INP_PROMPT),
             N("start", "LoadImage", 1, 0, [start, "image"], title="Start frame"),
             N("end", "LoadImage", 1, 1, [end, "image"], title="End frame"),
             N("inp", "CogVideoXFunInpaint", 2, 1, TINY_WORLD_SIZE,
               {"conditioning": ("text", 0), "vae": ("vae", 0), "start_images": ("start", 0),
                "end_image": ("end", 0)}), *tail]
    note = (_tiny_world_note("start and end frames with the Fun InP model") + f" Copy {start} and {end} "
            "(frames 0 and 16 of a red circle moving right) from the pack's workflows/ folder into "
            "ComfyUI/input, or load two frames of your own at 96x64.")
    return nodes, note


WORKFLOWS = {
    "cogvideox_2b_text_to_video": lambda: text_to_video("CogVideoX-2b", "ddim", "2B"),
    "cogvideox_5b_text_to_video": lambda: text_to_video("CogVideoX-5b", "dpm", "5B"),
    "cogvideox_5b_image_to_video": image_to_video,
    "cogvideox_fun_start_end_frames": fun_start_end,
    "cogvideox_long_video_context_windows": long_video,
    "cogvideox_video_to_video": video_to_video,
    "cogvideox_video_to_video_core_nodes": video_to_video_core_nodes,
    "cogvideox_chained_extension": chained_extension,
    "cogvideox_batch_prompts": batch_prompts,
    "cogvideox_tiny_world_text_to_video": tiny_world_text_to_video,
    "cogvideox_tiny_world_start_end_frames": tiny_world_start_end,
}


def render(name: str) -> str:
    nodes, note = WORKFLOWS[name]()
    return json.dumps(build(nodes, note), indent=1) + "\n"


def main() -> None:
    out = ROOT / "workflows"
    out.mkdir(exist_ok=True)
    for name in WORKFLOWS:
        (out / f"{name}.json").write_text(render(name))
        print(out / f"{name}.json")


if __name__ == "__main__":
    main()
