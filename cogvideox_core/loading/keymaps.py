"""Key layouts of CogVideoX weight files, mapped onto diffusers' state-dict keys.

Pure functions of key names: every layout becomes a *plan* ``{diffusers_key: Source}`` that
:mod:`cogvideox_core.loading.weights` reads; no file is read here. Transformer layouts: diffusers
``CogVideoXTransformer3DModel`` keys (bare or under a prefix), ComfyUI's
``comfy/ldm/cogvideo/model.py`` names, and the SwissArmyTransformer (``sat``) layout that
diffusers' ``convert_cogvideox_to_diffusers.py`` converts, whose fused q/k/v and adaLN tensors
are cut while reading (from ``.safetensors`` or, via :mod:`.sat_checkpoint`, SAT's ``.pt``). VAE: diffusers
``AutoencoderKLCogVideoX`` keys and the SAT VAE layout. T5: transformers ``T5EncoderModel`` keys;
ComfyUI ``scaled_fp8`` files' ``scale_weight`` is recorded so the reader can dequantise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Literal, Mapping, Sequence

Layout = Literal["diffusers", "comfyui", "sat", "transformers"]  # the last: T5 (transformers keys)


@dataclass(frozen=True)
class Source:
    """Where one target tensor comes from: ``key`` in the file set, or (fused SAT tensors) the
    concatenation along dim 0 of parts ``pick`` of ``key`` cut into ``chunks`` equal parts.
    ``scale_key`` names a scalar to multiply by (ComfyUI ``scaled_fp8`` files)."""

    key: str
    chunks: int = 1
    pick: tuple[int, ...] = (0,)
    scale_key: str | None = None

    def shape(self, stored: Sequence[int]) -> tuple[int, ...]:
        """The target shape given the stored shape of ``key``."""
        shape = tuple(int(s) for s in stored)
        if self.chunks == 1:
            return shape
        return (shape[0] // self.chunks * len(self.pick), *shape[1:])


@dataclass(frozen=True)
class Found:
    """A component located inside a set of keys: its layout and key prefix."""

    layout: Layout
    prefix: str


Plan = dict[str, Source]

# ---- transformer ---------------------------------------------------------------------------

# ComfyUI's comfy/ldm/cogvideo/model.py names and diffusers', one table for both directions: a
# {placeholder} stands for the same piece on both sides (_PIECES: what it matches).
_COMFY_NAMES: tuple[tuple[str, str], ...] = (
    ("time_embedding_linear_{n}.", "time_embedding.linear_{n}."),
    ("ofs_embedding_linear_{n}.", "ofs_embedding.linear_{n}."),
    ("blocks.{b}.{qkv}.", "transformer_blocks.{b}.attn1.to_{qkv}."),
    ("blocks.{b}.{norm_qk}.", "transformer_blocks.{b}.attn1.{norm_qk}."),
    ("blocks.{b}.attn_out.", "transformer_blocks.{b}.attn1.to_out.0."),
    ("blocks.{b}.ff_proj.", "transformer_blocks.{b}.ff.net.0.proj."),
    ("blocks.{b}.ff_out.", "transformer_blocks.{b}.ff.net.2."),
    ("blocks.{b}.{norm}.", "transformer_blocks.{b}.{norm}."),
)
_PIECES = {"n": "[12]", "b": r"\d+", "qkv": "[qkv]", "norm_qk": "norm_[qk]", "norm": "norm[12]"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _name_rule(src: str, dst: str) -> tuple[re.Pattern[str], str]:
    """``src`` -> ``dst`` as an anchored regex and its replacement (placeholders carried over)."""
    parts = _PLACEHOLDER.split(src)  # literal, name, literal, name, ...
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_PIECES[p]})" for i, p in enumerate(parts))
    return re.compile("^" + pattern), _PLACEHOLDER.sub(r"\\g<\1>", dst)


def comfy_rules(to_comfy: bool = False) -> tuple[tuple[re.Pattern[str], str], ...]:
    """The rules renaming ComfyUI CogVideoX keys to diffusers' (or, ``to_comfy``, back)."""
    return tuple(_name_rule(d, c) if to_comfy else _name_rule(c, d) for c, d in _COMFY_NAMES)


_COMFY_RULES = comfy_rules()

_SAT_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(a), b) for a, b in (
    (r"^transformer\.layers\.(\d+)\.attention\.dense\.", r"transformer_blocks.\1.attn1.to_out.0."),
    (r"^transformer\.layers\.(\d+)\.mlp\.dense_h_to_4h\.", r"transformer_blocks.\1.ff.net.0.proj."),
    (r"^transformer\.layers\.(\d+)\.mlp\.dense_4h_to_h\.", r"transformer_blocks.\1.ff.net.2."),
    (r"^transformer\.layers\.(\d+)\.input_layernorm\.", r"transformer_blocks.\1.norm1.norm."),
    (r"^transformer\.layers\.(\d+)\.post_attention_layernorm\.", r"transformer_blocks.\1.norm2.norm."),
    (r"^transformer\.final_layernorm\.", "norm_final."),
    (r"^mixins\.adaln_layer\.query_layernorm_list\.(\d+)\.", r"transformer_blocks.\1.attn1.norm_q."),
    (r"^mixins\.adaln_layer\.key_layernorm_list\.(\d+)\.", r"transformer_blocks.\1.attn1.norm_k."),
    (r"^time_embed\.0\.", "time_embedding.linear_1."),
    (r"^time_embed\.2\.", "time_embedding.linear_2."),
    (r"^ofs_embed\.0\.", "ofs_embedding.linear_1."),  # 1.5-I2V, as diffusers' converter maps it
    (r"^ofs_embed\.2\.", "ofs_embedding.linear_2."),
    (r"^mixins\.patch_embed\.", "patch_embed."),
    (r"^mixins\.pos_embed\.pos_embedding$", "patch_embed.pos_embedding"),  # 5B-I2V learned table
    (r"^mixins\.final_layer\.norm_final\.", "norm_out.norm."),
    (r"^mixins\.final_layer\.linear\.", "proj_out."),
    (r"^mixins\.final_layer\.adaLN_modulation\.1\.", "norm_out.linear."),
))
_SAT_QKV = re.compile(r"^transformer\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)$")
_SAT_ADALN = re.compile(r"^mixins\.adaln_layer\.adaLN_modulations\.(\d+)\.1\.(weight|bias)$")
# Keys the SAT checkpoints carry that diffusers recomputes or never uses.
_SAT_DROP = ("embed_tokens", "freqs_sin", "freqs_cos", "position_embedding")
# Each SAT block's adaLN output is 12 chunks: [shift, scale, gate] x (attn video, ff video,
# attn text, ff text), per diffusers' converter: norm1 takes chunks 0-2 + 6-8, norm2 3-5 + 9-11.
_SAT_NORM1, _SAT_NORM2 = (0, 1, 2, 6, 7, 8), (3, 4, 5, 9, 10, 11)

_TRANSFORMER_SIGNATURES: tuple[tuple[Layout, str, str], ...] = (
    # (layout, key whose suffix locates the prefix, key that must exist under that prefix)
    ("sat", "mixins.patch_embed.proj.weight", "transformer.layers.0.attention.query_key_value.weight"),
    ("diffusers", "patch_embed.proj.weight", "transformer_blocks.0.attn1.to_q.weight"),
    ("comfyui", "patch_embed.proj.weight", "blocks.0.q.weight"),
)


def find_transformer(keys: Iterable[str]) -> Found | None:
    """Layout and prefix of a CogVideoX transformer among ``keys``, or None."""
    return _find(set(keys), _TRANSFORMER_SIGNATURES)


def _find(keys: set[str], signatures: Sequence[tuple[Layout, str, str]]) -> Found | None:
    for layout, anchor, partner in signatures:
        prefixes = sorted(k[: -len(anchor)] for k in keys if k.endswith(anchor))
        for prefix in prefixes:  # shortest first: "" before "model."
            if prefix + partner in keys:
                return Found(layout, prefix)
    return None


def transformer_plan(keys: Iterable[str], found: Found) -> tuple[Plan, list[str]]:
    """``(plan, dropped)``: diffusers key -> source for every key under ``found.prefix``, and
    the source keys deliberately left out (SAT's recomputed tables)."""
    if found.layout == "diffusers":
        return _renamed(keys, found.prefix, lambda k: k), []
    if found.layout == "comfyui":
        return _renamed(keys, found.prefix, lambda k: apply_rules(_COMFY_RULES, k)), []
    return _sat_plan(keys, found.prefix)


def apply_rules(rules: Sequence[tuple[re.Pattern[str], str]], key: str) -> str:
    """``key`` renamed by the first of ``rules`` that matches (unchanged if none does)."""
    for pattern, replacement in rules:
        new, n = pattern.subn(replacement, key, count=1)
        if n:
            return new
    return key


def _renamed(keys: Iterable[str], prefix: str, rename: Callable[[str], str]) -> Plan:
    return {rename(k[len(prefix):]): Source(k) for k in keys if k.startswith(prefix)}


def _sat_plan(keys: Iterable[str], prefix: str) -> tuple[Plan, list[str]]:
    plan: Plan = {}
    dropped: list[str] = []
    for key in keys:
        if not key.startswith(prefix):
            continue
        short = key[len(prefix):]
        if any(part in short for part in _SAT_DROP):
            dropped.append(key)
        elif m := _SAT_QKV.match(short):
            block, kind = m.groups()
            for i, name in enumerate("qkv"):
                plan[f"transformer_blocks.{block}.attn1.to_{name}.{kind}"] = Source(key, 3, (i,))
        elif m := _SAT_ADALN.match(short):
            block, kind = m.groups()
            plan[f"transformer_blocks.{block}.norm1.linear.{kind}"] = Source(key, 12, _SAT_NORM1)
            plan[f"transformer_blocks.{block}.norm2.linear.{kind}"] = Source(key, 12, _SAT_NORM2)
        else:
            plan[apply_rules(_SAT_RULES, short)] = Source(key)
    return plan, dropped


# ---- VAE -----------------------------------------------------------------------------------

_VAE_SIGNATURES: tuple[tuple[Layout, str, str], ...] = (
    ("sat", "encoder.conv_in.conv.weight", "encoder.down.0.block.0.conv1.conv.weight"),
    ("diffusers", "encoder.conv_in.conv.weight", "decoder.norm_out.conv_y.conv.weight"),
)

_SAT_VAE_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(a), b) for a, b in (
    (r"\.block\.", ".resnets."),
    (r"^encoder\.down\.", "encoder.down_blocks."),
    (r"\.downsample\.", ".downsamplers.0."),
    (r"\.upsample\.", ".upsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
    (r"\.mid\.block_1\.", ".mid_block.resnets.0."),
    (r"\.mid\.block_2\.", ".mid_block.resnets.1."),
))
_SAT_VAE_UP = re.compile(r"^decoder\.up\.(\d+)\.")


def find_vae(keys: Iterable[str]) -> Found | None:
    """Layout and prefix of a CogVideoX VAE among ``keys`` (the causal-conv encoder plus the
    spatially normed decoder), or None."""
    return _find(set(keys), _VAE_SIGNATURES)


def vae_plan(keys: Iterable[str], found: Found) -> tuple[Plan, list[str]]:
    """``(plan, dropped)`` for the VAE keys under ``found.prefix`` (SAT's ``loss.*`` dropped)."""
    keys = [k for k in keys if k.startswith(found.prefix)]
    if found.layout == "diffusers":
        return _renamed(keys, found.prefix, lambda k: k), []
    short = [k[len(found.prefix):] for k in keys]
    ups = {int(m.group(1)) for s in short if (m := _SAT_VAE_UP.match(s))}
    top = max(ups) if ups else 0
    plan: Plan = {}
    dropped = []
    for key, s in zip(keys, short):
        if s.startswith("loss."):
            dropped.append(key)
            continue
        s = _SAT_VAE_UP.sub(lambda m: f"decoder.up_blocks.{top - int(m.group(1))}.", s)
        for pattern, replacement in _SAT_VAE_RULES:
            s = pattern.sub(replacement, s)
        plan[s] = Source(key)
    return plan, dropped


# ---- T5 ------------------------------------------------------------------------------------

_T5_ANCHOR = "encoder.block.0.layer.0.SelfAttention.q.weight"
_T5_UNUSED = re.compile(r"^(decoder\.|lm_head\.|spiece_model$|logit_scale$)")


def find_t5(keys: Iterable[str]) -> Found | None:
    """Prefix of a T5 encoder among ``keys`` (``encoder.block.0...q.weight``), or None."""
    keys = set(keys)
    prefixes = sorted(k[: -len(_T5_ANCHOR)] for k in keys if k.endswith(_T5_ANCHOR))
    return Found("transformers", prefixes[0]) if prefixes else None


def t5_plan(keys: Iterable[str], found: Found) -> tuple[Plan, list[str]]:
    """``(plan, dropped)`` for a ``T5EncoderModel``: the token embedding feeds both
    ``shared.weight`` and ``encoder.embed_tokens.weight`` (tied, read once); decoder and LM-head
    keys of a full T5 are dropped."""
    plan: Plan = {}
    dropped = []
    for key in keys:
        if not key.startswith(found.prefix):
            continue
        short = key[len(found.prefix):]
        if _T5_UNUSED.match(short):
            dropped.append(key)
        else:
            plan[short] = Source(key)
    embed = plan.get("shared.weight") or plan.get("encoder.embed_tokens.weight")
    if embed is not None:
        plan["shared.weight"] = plan["encoder.embed_tokens.weight"] = embed
    return plan, dropped


def _is_scale_bookkeeping(key: str) -> bool:
    return key.endswith((".scale_weight", ".scale_input")) or key.rsplit(".", 1)[-1] == "scaled_fp8"


def split_scales(plan: Mapping[str, Source]) -> tuple[Plan, list[str]]:
    """ComfyUI ``scaled_fp8`` files store ``<layer>.weight`` in fp8 beside a scalar
    ``<layer>.scale_weight`` (plus ``scale_input`` and a ``scaled_fp8`` marker). Returns the plan
    without those bookkeeping keys, each weight given its ``scale_key``, and the removed keys."""
    book = {s.key for s in plan.values() if _is_scale_bookkeeping(s.key)}
    out: Plan = {}
    for target, src in plan.items():
        if src.key in book:
            continue
        scale = src.key[: -len("weight")] + "scale_weight" if src.key.endswith(".weight") else None
        out[target] = replace(src, scale_key=scale if scale in book else None)
    return out, sorted(book)


__all__ = ["Layout", "Source", "Found", "Plan", "find_transformer", "transformer_plan", "find_vae",
           "vae_plan", "find_t5", "t5_plan", "split_scales"]
