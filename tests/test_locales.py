"""The shipped translations (``locales/``) against the live node definitions, without ComfyUI.

ComfyUI's server (``app/custom_node_manager.py``, ``CustomNodeManager.build_translations``) reads
``locales/<lang>/main.json`` plus ``nodeDefs.json``, ``commands.json`` and ``settings.json`` of
every custom node folder and serves them merged per language at ``GET /i18n``; the frontend merges
that into its vue-i18n messages and looks node text up as

    nodeDefs.<class>.display_name / .description
    nodeDefs.<class>.inputs.<input name, "." -> "_">.name / .tooltip
    nodeDefs.<class>.outputs.<output index>.name / .tooltip
    nodeCategories.<one segment of CATEGORY>      dataTypes.<socket type>

falling back to the node's own (English) text for any key the language lacks. So a translation
that misses an input silently shows English, and one for a renamed input is dead: every check
here compares with ``INPUT_TYPES``/``RETURN_TYPES`` as the pack defines them now.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from make_workflows import ROOT, load_pack

PACK = load_pack()
NODES: dict[str, Any] = PACK.NODE_CLASS_MAPPINGS
DISPLAY: dict[str, str] = PACK.NODE_DISPLAY_NAME_MAPPINGS
LOCALES = ROOT / "locales"
ZH = LOCALES / "zh"

# The files CustomNodeManager.build_translations reads from each language folder; any other
# file there is never served.
SERVER_FILES = {"main.json", "nodeDefs.json", "commands.json", "settings.json"}
# The languages the ComfyUI frontend ships (its locale selector); another folder name is never used.
FRONTEND_LANGS = {"en", "zh", "zh-TW", "ru", "ja", "ko", "fr", "es", "ar", "tr"}
# Technical terms kept as they are (as core ComfyUI's zh locale keeps them): a zh input or output
# name without Chinese characters must be one of these, anything else is untranslated English.
KEPT_TERMS = {"CFG", "LoRA", "VAE", "T5", "CLIP", "Latent"}
# vue-i18n message syntax: {interpolation}, @:linked messages, plural | choices.
I18N_SYNTAX = re.compile(r"[{}@|]")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
PACK_TYPE_PREFIX = "COGVIDEOX_"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:  # json.loads would silently keep the last one
        raise ValueError(f"duplicate keys {dupes}")
    return dict(pairs)


def load_json(path: Path) -> Any:
    """Strict UTF-8 (no BOM), valid JSON, no duplicate keys."""
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), f"{path}: UTF-8 BOM"
    return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)


def live_inputs(cls: Any) -> dict[str, tuple]:
    """Required then optional inputs, as the editor shows them (hidden ones are never shown)."""
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def i18n_key(name: str) -> str:
    """The frontend's normalizeI18nKey: dots would split the message path."""
    return name.replace(".", "_")


def english_tooltip(spec: tuple) -> str:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return str(opts.get("tooltip") or "")


def _text_problems(where: str, zh: Any, english: str = "") -> list[str]:
    if not isinstance(zh, str) or not zh.strip():
        return [f"{where}: missing or empty"]
    problems = []
    if not CJK.search(zh):
        problems.append(f"{where}: no Chinese characters: {zh!r}")
    if english and sorted(set(NUMBER.findall(zh))) != sorted(set(NUMBER.findall(english))):
        problems.append(f"{where}: numbers {sorted(set(NUMBER.findall(zh)))} differ from the "
                        f"English {sorted(set(NUMBER.findall(english)))} (English text changed?)")
    return problems


def _name_problems(where: str, zh: Any) -> list[str]:
    if not isinstance(zh, str) or not zh.strip():
        return [f"{where}: missing or empty name"]
    bare = zh.replace("CogVideoX", "").strip()  # the brand is kept, like the terms
    if not CJK.search(zh) and bare not in KEPT_TERMS:
        return [f"{where}: {zh!r} is neither Chinese nor a kept technical term {sorted(KEPT_TERMS)}"]
    return []


def node_problems(name: str, cls: Any, entry: Any) -> list[str]:
    """Everything wrong with one node's zh entry, compared with the live class."""
    if not isinstance(entry, dict):
        return [f"{name}: no entry"]
    problems = [f"{name}: unknown key {k!r}" for k in entry
                if k not in {"display_name", "description", "inputs", "outputs"}]
    problems += _text_problems(f"{name}.display_name", entry.get("display_name"))
    if "CogVideoX" in DISPLAY.get(name, "") and "CogVideoX" not in str(entry.get("display_name")):
        problems.append(f"{name}.display_name: drops 'CogVideoX' (searching for it finds nothing)")
    english_description = str(getattr(cls, "DESCRIPTION", "") or "")
    if english_description:
        problems += _text_problems(f"{name}.description", entry.get("description"), english_description)
    elif "description" in entry:  # the frontend only translates a description the node has
        problems.append(f"{name}.description: the node has no DESCRIPTION")

    inputs = {i18n_key(k): v for k, v in live_inputs(cls).items()}
    zh_inputs = entry.get("inputs", {})
    problems += [f"{name}.inputs.{k}: no such input (stale)" for k in zh_inputs if k not in inputs]
    for key, spec in inputs.items():
        problems += _slot_problems(f"{name}.inputs.{key}", "input", zh_inputs.get(key),
                                   english_tooltip(spec), "tooltip" in zh_inputs.get(key, {}))

    count = len(cls.RETURN_TYPES)
    tips = list(getattr(cls, "OUTPUT_TOOLTIPS", None) or ())
    zh_outputs = entry.get("outputs", {})
    problems += [f"{name}.outputs.{k}: no such output (stale)" for k in zh_outputs
                 if k not in {str(i) for i in range(count)}]
    for index in range(count):
        zh = zh_outputs.get(str(index))
        problems += _slot_problems(f"{name}.outputs.{index}", "output", zh,
                                   tips[index] if index < len(tips) else None,
                                   bool(isinstance(zh, dict) and zh.get("tooltip")))
    return problems


def _slot_problems(where: str, kind: str, zh: Any, english_tip: str | None, has_zh_tip: bool) -> list[str]:
    """One input's or output's zh entry: translated, known keys, a name, a tooltip exactly where
    the English one has one (``has_zh_tip``: whether the entry carries a tooltip at all)."""
    if not isinstance(zh, dict):
        return [f"{where}: not translated"]
    problems = [f"{where}: unknown key {k!r}" for k in zh if k not in {"name", "tooltip"}]
    problems += _name_problems(where, zh.get("name"))
    if english_tip:
        problems += _text_problems(f"{where}.tooltip", zh.get("tooltip"), english_tip)
    elif has_zh_tip:
        problems.append(f"{where}.tooltip: the {kind} has no tooltip (stale)")
    return problems


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.fixture(scope="module")
def zh_defs() -> dict:
    return load_json(ZH / "nodeDefs.json")


@pytest.fixture(scope="module")
def zh_main() -> dict:
    return load_json(ZH / "main.json")


# ---- files ------------------------------------------------------------------------------------

def test_locale_files_are_what_the_server_serves() -> None:
    assert (ZH / "nodeDefs.json").is_file() and (ZH / "main.json").is_file()
    for lang in LOCALES.iterdir():
        assert lang.is_dir() and lang.name in FRONTEND_LANGS, f"locales/{lang.name}: not a frontend language"
        for file in lang.iterdir():
            assert file.name in SERVER_FILES, f"{file}: ComfyUI's server never reads it"
            data = load_json(file)
            assert isinstance(data, dict) and data, f"{file}: not a non-empty JSON object"
            for text in _strings(data):
                assert not I18N_SYNTAX.search(text), f"{file}: vue-i18n syntax character in {text!r}"
    # nodeDefs.json is served as main.json's "nodeDefs" key and replaces it: keep them apart.
    assert "nodeDefs" not in load_json(ZH / "main.json")


# ---- nodeDefs.json ------------------------------------------------------------------------------

def test_zh_has_exactly_the_pack_nodes(zh_defs: dict) -> None:
    assert NODES, "the pack registered no nodes"
    missing = sorted(set(NODES) - set(zh_defs))
    stale = sorted(set(zh_defs) - set(NODES))
    assert not missing and not stale, f"untranslated nodes {missing}; entries for no node {stale}"


@pytest.mark.parametrize("name", sorted(NODES))
def test_zh_node_matches_its_definition(name: str, zh_defs: dict) -> None:
    problems = node_problems(name, NODES[name], zh_defs.get(name))
    assert not problems, "\n".join(problems)


def test_the_check_sees_drift(zh_defs: dict) -> None:
    """The comparison reads the live class: a changed node or a broken entry is reported."""
    name = "CogVideoXSampler"
    cls, entry = NODES[name], zh_defs[name]
    assert node_problems(name, cls, entry) == []

    class Renamed(cls):  # one input renamed, one added, one output more
        @classmethod
        def INPUT_TYPES(cls_):  # noqa: N802
            spec = copy.deepcopy(cls.INPUT_TYPES())
            spec["required"]["num_steps"] = spec["required"].pop("steps")
            spec.setdefault("optional", {})["shift"] = ("FLOAT", {"tooltip": "Timestep shift 3.0."})
            return spec
        RETURN_TYPES = (*cls.RETURN_TYPES, "IMAGE")

    found = "\n".join(node_problems(name, Renamed, entry))
    for expected in ("inputs.steps: no such input", "inputs.num_steps: not translated",
                     "inputs.shift: not translated", f"outputs.{len(cls.RETURN_TYPES)}: not translated"):
        assert expected in found

    broken = copy.deepcopy(entry)
    broken["inputs"]["cfg"]["tooltip"] = "Classifier-free guidance scale."
    broken["inputs"]["seed"]["name"] = "seed"
    broken["inputs"]["steps"]["tooltip"] = broken["inputs"]["steps"]["tooltip"].replace("50", "30")
    del broken["description"]
    found = "\n".join(node_problems(name, cls, broken))
    for expected in ("inputs.cfg.tooltip: no Chinese", "inputs.seed: 'seed' is neither",
                     "inputs.steps.tooltip: numbers", "description: missing"):
        assert expected in found


# ---- main.json ----------------------------------------------------------------------------------

def _category_segments() -> set[str]:
    return {s for cls in NODES.values() for s in str(cls.CATEGORY).split("/")}


def _socket_types() -> set[str]:
    types = {t for cls in NODES.values() for t in cls.RETURN_TYPES}
    types |= {spec[0] for cls in NODES.values() for spec in live_inputs(cls).values()
              if isinstance(spec[0], str)}
    return types


def test_zh_categories_cover_the_node_menu(zh_main: dict) -> None:
    """The add-node menu translates CATEGORY one segment at a time; the pack's root stays."""
    translated = zh_main.get("nodeCategories", {})
    segments = _category_segments()
    roots = {str(cls.CATEGORY).split("/")[0] for cls in NODES.values()}
    assert sorted(segments - roots - set(translated)) == [], "untranslated category segments"
    assert sorted(set(translated) - segments) == [], "categories no node uses"
    for key, text in translated.items():
        assert _name_problems(f"nodeCategories.{key}", text) == []


def test_zh_data_types_cover_the_pack_sockets(zh_main: dict) -> None:
    translated = zh_main.get("dataTypes", {})
    types = _socket_types()
    ours = {t for t in types if t.startswith(PACK_TYPE_PREFIX)}
    assert ours, "the pack uses no COGVIDEOX_ socket types"
    assert sorted(ours - set(translated)) == [], "untranslated pack socket types"
    # Core types (IMAGE, LATENT...) belong to the frontend's own table: the merge would override it.
    assert sorted(set(translated) - ours) == [], "dataTypes for types the pack does not own"
    for key, text in translated.items():
        assert _name_problems(f"dataTypes.{key}", text) == []
