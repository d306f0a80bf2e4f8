"""Text encode nodes: prompt embeddings from the pack's T5 loader or from ComfyUI's own CLIP.

Every CogVideoX family reads T5-XXL states of exactly 226 tokens computed without a mask
(``cogvideox_core.loading.text``). ComfyUI's CLIP tokenizes with its own padding rules, so the CLIP
node rewrites the T5 token stream to the CogVideoX rule before encoding: the prompt's tokens,
cut to 225, then ``</s>``, then ``<pad>`` up to 226.
"""
from __future__ import annotations

from typing import Any

import torch

from ..cogvideox_core.loading.text import MAX_LENGTH, encode_prompts
from . import host
from .common import CONDITIONING, T5, PromptConditioning, T5Handle, tip

T5_PAD, T5_EOS = 0, 1  # T5's vocabulary: <pad> is 0, </s> is 1
PROMPT_TIP = "What the video shows (T5 reads 226 tokens; a longer prompt is cut, with a warning in the log)."
NEGATIVE_TIP = "What to steer away from (used when cfg > 1); the pipelines' default is empty."


def _prompt_inputs() -> dict[str, tuple]:
    return {"positive": tip("STRING", PROMPT_TIP, multiline=True, default=""),
            "negative": tip("STRING", NEGATIVE_TIP, multiline=True, default="")}


class CogVideoXTextEncode:
    DESCRIPTION = "Encodes the positive and negative prompts with the pack's T5 loader (226 tokens, no mask)."
    CATEGORY = "CogVideoX/conditioning"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"t5": tip(T5, "From CogVideoX T5 Text Encoder Loader."), **_prompt_inputs()}}

    def encode(self, t5: T5Handle, positive: str, negative: str = "") -> tuple[PromptConditioning]:
        runtime = host.runtime(t5.patcher)
        model = host.load(runtime, t5.patcher)
        pos, neg = (host.to_intermediate(encode_prompts(model, t5.tokenizer, [text], device=runtime.device))  # [1, 226, D]
                    for text in (positive, negative))  # one call each, as the pipelines
        return (PromptConditioning(pos, neg),)


def encode_lines(t5: T5Handle | None, text: str, expected: int,
                 input_name: str = "prompts") -> list[torch.Tensor] | None:
    """One T5 embedding [1, 226, D] per non-empty line of ``text`` (there must be ``expected``
    of them: one per chunk), or None when it has none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    if len(lines) != expected:
        raise ValueError(f"{input_name}: {len(lines)} prompt line(s) for chunks={expected}: give one "
                         "prompt per chunk, one per line (or none)")
    if t5 is None:
        raise ValueError(f"{input_name}: {len(lines)} prompt line(s) given without t5: connect a "
                         "CogVideoX T5 Text Encoder Loader to encode them")
    runtime = host.runtime(t5.patcher)
    model = host.load(runtime, t5.patcher)
    return [host.to_intermediate(encode_prompts(model, t5.tokenizer, [line], device=runtime.device))
            for line in lines]


def cogvideox_tokens(tokens: dict, input_name: str = "clip") -> dict:
    """ComfyUI ``clip.tokenize`` output with its T5 stream rewritten to the CogVideoX rule.

    The stream is the only one, or the one named ``t5xxl``; its chunks are joined, padding and
    ``</s>`` removed, the tokens cut to 225, then ``</s>`` and pads fill 226. Entries keep the
    shape ComfyUI gives them ((token, weight) or (token, weight, word id)).
    """
    key = next(iter(tokens)) if len(tokens) == 1 else ("t5xxl" if "t5xxl" in tokens else None)
    if key is None:
        raise ValueError(f"{input_name}: a CLIP with token streams {sorted(tokens)} is not a T5-XXL "
                         "text encoder; load t5xxl with CLIPLoader (or use the CogVideoX T5 loader)")
    entries = [e for chunk in tokens[key] for e in chunk]
    template = entries[0] if entries else (T5_PAD, 1.0)
    while entries and _token(entries[-1]) in (T5_PAD, T5_EOS):
        entries.pop()
    entries = entries[:MAX_LENGTH - 1]
    entries.append(_like(template, T5_EOS))
    entries += [_like(template, T5_PAD)] * (MAX_LENGTH - len(entries))
    return {**tokens, key: [entries]}


def _token(entry: Any) -> int:
    t = entry[0]
    return int(t) if isinstance(t, (int, torch.Tensor)) else -1  # embeddings are not ids


def _like(template: Any, token: int) -> tuple:
    return (token, 1.0, *([0] * (len(template) - 2)))


class CogVideoXCLIPTextEncode:
    DESCRIPTION = ("Encodes the prompts with ComfyUI's own CLIP (a T5-XXL loaded by CLIPLoader, any "
                   "type), applying CogVideoX's 226-token rule.")
    CATEGORY = "CogVideoX/conditioning"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"clip": tip("CLIP", "A T5-XXL text encoder from ComfyUI's CLIPLoader."),
                             **_prompt_inputs()}}

    def encode(self, clip: Any, positive: str, negative: str = "") -> tuple[PromptConditioning]:
        pos, neg = (self._states(clip, text) for text in (positive, negative))
        return (PromptConditioning(pos, neg),)

    @staticmethod
    def _states(clip: Any, text: str) -> torch.Tensor:
        out = clip.encode_from_tokens(cogvideox_tokens(clip.tokenize(text)), return_pooled=False)
        states = out[0] if isinstance(out, (tuple, list)) else out  # [1, 226, D]
        if states.ndim != 3 or states.shape[1] != MAX_LENGTH:
            raise ValueError(f"clip: encoded to shape {tuple(states.shape)}, expected [1, {MAX_LENGTH}, D]: "
                             "load the T5-XXL file alone (not together with CLIP-L/G)")
        return host.to_intermediate(states)


NODES: dict[str, Any] = {
    "CogVideoXTextEncode": (CogVideoXTextEncode, "CogVideoX Text Encode (T5)"),
    "CogVideoXCLIPTextEncode": (CogVideoXCLIPTextEncode, "CogVideoX Text Encode (CLIP)"),
}
