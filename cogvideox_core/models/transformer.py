"""The CogVideoX diffusion transformer, every family, on an injected ``ops`` / attention.

Numerically diffusers' ``CogVideoXTransformer3DModel``, with its state-dict keys (loads with
``strict=True``). Unlike diffusers it computes its own positions (``config.positions``: sincos,
Fun's resized sincos, RoPE linspace or slice, 5B-I2V's learned table) and ofs for any size the
family allows, and refuses others with a ``ValueError``; the limits are the config's
(:mod:`cogvideox_core.families`). Odd 1.5 latent counts are refused, not padded: the padding
latent belongs to the sampler state (README "How it works"). Attention is injectable because
its memory grows with the square of the sequence. Tables are cached per (grid, device, dtype)
and cast where diffusers casts them.
"""
from __future__ import annotations

import logging
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..families import SPATIAL_COMPRESSION, TransformerConfig, pixel_frames
from ..ops import AttentionFn, Ops, default_ops, sdpa_attention
from .positions import (Grid, apply_rope, rope_3d, rope_positions_linspace, rope_positions_slice,
                        sincos_3d, sincos_resized, timestep_embedding)

logger = logging.getLogger(__name__)

QK_NORM_EPS = 1e-6  # diffusers CogVideoXBlock: Attention(..., eps=1e-6)

Rope = tuple[torch.Tensor, torch.Tensor]
Device = torch.device | str | None
DType = torch.dtype | None


def _check_config(config: TransformerConfig) -> None:
    """Config combinations no checkpoint has and this model does not implement."""
    if config.uses_rope and config.head_dim % 8:
        raise ValueError(f"head_dim={config.head_dim} must be a multiple of 8 for 3D RoPE "
                         "(split t/h/w = 1/4, 3/8, 3/8)")
    if config.learned_positions and config.positions != "rope_linspace":
        raise ValueError(f"learned_positions with positions={config.positions!r}: only the "
                         "CogVideoX 1.0 RoPE layout (5B-I2V) has a learned table")
    if config.ofs_embed_dim and config.ofs_embed_dim != config.time_embed_dim:
        raise ValueError(f"ofs_embed_dim={config.ofs_embed_dim} must equal time_embed_dim="
                         f"{config.time_embed_dim}: the two embeddings are summed")


class _TimestepMLP(nn.Module):
    """diffusers ``TimestepEmbedding``: linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_dim: int, out_dim: int, ops: Ops, dtype: DType, device: Device) -> None:
        super().__init__()
        self.linear_1 = ops.Linear(in_dim, out_dim, dtype=dtype, device=device)
        self.linear_2 = ops.Linear(out_dim, out_dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class _PatchEmbed(nn.Module):
    """Text projection and video patchify into one token sequence [B, L + N, D].

    1.0: a p x p stride-p Conv2d per frame. 1.5: a Linear over pt x p x p patches; diffusers
    builds that Linear with a bias whatever ``patch_bias`` says, and so does this module
    (``patch_bias`` only applies to the 1.0 convolution).
    """

    def __init__(self, config: TransformerConfig, ops: Ops, dtype: DType, device: Device) -> None:
        super().__init__()
        d, p, pt = config.inner_dim, config.patch_size, config.patch_size_t
        self.patch_size, self.patch_size_t = p, pt
        if pt is None:
            self.proj = ops.Conv2d(config.in_channels, d, kernel_size=p, stride=p,
                                   bias=config.patch_bias, dtype=dtype, device=device)
        else:
            self.proj = ops.Linear(config.in_channels * pt * p * p, d, dtype=dtype, device=device)
        self.text_proj = ops.Linear(config.text_dim, d, dtype=dtype, device=device)
        if config.learned_positions:
            rows = config.max_text_len + _sample_tokens(config)
            table = torch.empty(1, rows, d, dtype=dtype, device=device)  # loaded from weights
            self.register_buffer("pos_embedding", table, persistent=True)

    def forward(self, x: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        text = self.text_proj(text_states)  # [B, L, D]
        video = self._patchify(x)  # [B, N, D]
        return torch.cat([text, video], dim=1).contiguous()  # [B, L + N, D]

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, f, c, h, w = x.shape
        p, pt = self.patch_size, self.patch_size_t
        if pt is None:
            v = self.proj(x.reshape(b * f, c, h, w))  # [B*F, D, H/p, W/p]
            v = v.view(b, f, *v.shape[1:]).flatten(3)  # [B, F, D, H/p * W/p]
            return v.transpose(2, 3).flatten(1, 2)  # [B, F * H/p * W/p, D]
        v = x.permute(0, 1, 3, 4, 2)  # [B, F, H, W, C]
        v = v.reshape(b, f // pt, pt, h // p, p, w // p, p, c)  # [B, F/pt, pt, H/p, p, W/p, p, C]
        v = v.permute(0, 1, 3, 5, 7, 2, 4, 6)  # [B, F/pt, H/p, W/p, C, pt, p, p]
        v = v.flatten(4, 7).flatten(1, 3)  # [B, N, C*pt*p*p]
        return self.proj(v)  # [B, N, D]


def _has_text_rows(config: TransformerConfig) -> bool:
    """Whether an additive position table with text rows is added (sincos kinds and learned)."""
    return not config.uses_rope or config.learned_positions


def fit_text(config: TransformerConfig, states: torch.Tensor) -> torch.Tensor:
    """T5 states [B, L, D] as a transformer of ``config`` reads them. A model whose additive
    table has fewer text rows than L (``max_text_seq_length`` < 226: the tiny world's models,
    trained on short captions) reads the first ``max_text_len`` states: the prompt's tokens come
    first, ``</s>`` and the pads after (the 226-token rule of :mod:`cogvideox_core.loading.text`).
    Every other model reads ``states`` unchanged (``check_input`` names a length it cannot take)."""
    n = text_rows_read(config, states.shape[1])
    return states[:, :n] if n < states.shape[1] else states


def text_rows_read(config: TransformerConfig, length: int) -> int:
    """How many of ``length`` T5 states a model of ``config`` reads (:func:`fit_text`)."""
    return min(length, config.max_text_len) if _has_text_rows(config) else length


def _sample_tokens(config: TransformerConfig) -> int:
    """Video tokens of the trained clip: 13 * 30 * 45 = 17550 for 1.0 at 49 x 480 x 720."""
    p = config.patch_size
    return config.sample_latent_frames * (config.sample_height // p) * (config.sample_width // p)


class _LayerNormZero(nn.Module):
    """diffusers ``CogVideoXLayerNormZero``: one LayerNorm, separate shift/scale/gate for
    video and text from the time embedding."""

    def __init__(self, time_dim: int, dim: int, eps: float, ops: Ops, dtype: DType,
                 device: Device) -> None:
        super().__init__()
        self.linear = ops.Linear(time_dim, 6 * dim, dtype=dtype, device=device)
        self.norm = ops.LayerNorm(dim, eps=eps, elementwise_affine=True, dtype=dtype, device=device)

    def forward(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        mods = self.linear(F.silu(temb)).chunk(6, dim=1)  # 6 x [B, D]
        shift, scale, gate, t_shift, t_scale, t_gate = (m[:, None, :] for m in mods)  # [B, 1, D]
        video = self.norm(video) * (1 + scale) + shift
        text = self.norm(text) * (1 + t_scale) + t_shift
        return video, text, gate, t_gate


class _Attention(nn.Module):
    """Joint self-attention with per-head LayerNorm on q and k and RoPE on video tokens."""

    def __init__(self, dim: int, heads: int, head_dim: int, ops: Ops, dtype: DType,
                 device: Device) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        kw = dict(dtype=dtype, device=device)
        self.to_q = ops.Linear(dim, heads * head_dim, **kw)
        self.to_k = ops.Linear(dim, heads * head_dim, **kw)
        self.to_v = ops.Linear(dim, heads * head_dim, **kw)
        self.norm_q = ops.LayerNorm(head_dim, eps=QK_NORM_EPS, elementwise_affine=True, **kw)
        self.norm_k = ops.LayerNorm(head_dim, eps=QK_NORM_EPS, elementwise_affine=True, **kw)
        self.to_out = nn.ModuleList([ops.Linear(heads * head_dim, dim, **kw), nn.Identity()])

    def forward(self, x: torch.Tensor, text_len: int, rope: Rope | None,
                attention: AttentionFn) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.norm_q(self.to_q(x).view(b, s, self.heads, self.head_dim))  # [B, S, H, Dh]
        k = self.norm_k(self.to_k(x).view(b, s, self.heads, self.head_dim))  # [B, S, H, Dh]
        if rope is not None:
            q, k = (_rope_video(t, text_len, rope) for t in (q, k))
        q, k = q.reshape(b, s, -1), k.reshape(b, s, -1)  # [B, S, H*Dh]
        out = attention(q, k, self.to_v(x), self.heads)  # [B, S, H*Dh]
        return self.to_out[0](out)  # [B, S, D]


def _rope_video(x: torch.Tensor, text_len: int, rope: Rope) -> torch.Tensor:
    """RoPE on the video tokens of x [B, L + N, H, Dh]; text tokens pass unchanged."""
    video = apply_rope(x[:, text_len:], *rope)  # [B, N, H, Dh]
    return torch.cat([x[:, :text_len], video], dim=1)


class _GeluProj(nn.Module):
    """diffusers ``GELU(approximate="tanh")``: the projection then the activation."""

    def __init__(self, dim: int, inner: int, ops: Ops, dtype: DType, device: Device) -> None:
        super().__init__()
        self.proj = ops.Linear(dim, inner, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class _FeedForward(nn.Module):
    """``net.0`` GELU projection to 4 * dim, ``net.1`` (dropout), ``net.2`` back to dim."""

    def __init__(self, dim: int, ops: Ops, dtype: DType, device: Device) -> None:
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, 4 * dim, ops, dtype, device), nn.Identity(),
                                  ops.Linear(4 * dim, dim, dtype=dtype, device=device)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BlockRunner(Protocol):
    """Runs the block stack of one forward: ``run(blocks, video [B, N, D], text [B, L, D], temb
    [B, time_dim], rope, attention) -> (video, text)``, e.g. skipping blocks from a cache."""

    def run(self, blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
            rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]: ...


def run_all_blocks(blocks: Sequence[nn.Module], video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
                   rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Every block in order: the plain forward."""
    for block in blocks:
        video, text = block(video, text, temb, rope, attention)
    return video, text


class _Block(nn.Module):
    """One CogVideoX block: modulated joint attention and feed-forward over [text | video]."""

    def __init__(self, config: TransformerConfig, ops: Ops, dtype: DType, device: Device) -> None:
        super().__init__()
        d, kw = config.inner_dim, dict(ops=ops, dtype=dtype, device=device)
        self.norm1 = _LayerNormZero(config.time_embed_dim, d, config.norm_eps, **kw)
        self.attn1 = _Attention(d, config.num_heads, config.head_dim, **kw)
        self.norm2 = _LayerNormZero(config.time_embed_dim, d, config.norm_eps, **kw)
        self.ff = _FeedForward(d, **kw)

    def forward(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
                rope: Rope | None, attention: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        video, text, _ = self.reusing(video, text, temb, rope, attention, None)
        return video, text

    def reusing(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rope: Rope | None,
                attention: AttentionFn, attn_out: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block with the attention output ``attn_out`` [B, L+N, D] given instead of computed
        (None: computed); returns (video, text, the attention output used), for step caches that
        reuse attention (Pyramid Attention Broadcast, FasterCache)."""
        n = text.shape[1]
        norm_v, norm_t, gate, t_gate = self.norm1(video, text, temb)
        if attn_out is None:
            attn_out = self.attn1(torch.cat([norm_t, norm_v], dim=1), n, rope, attention)  # [B, L+N, D]
        video, text = video + gate * attn_out[:, n:], text + t_gate * attn_out[:, :n]
        norm_v, norm_t, gate, t_gate = self.norm2(video, text, temb)
        out = self.ff(torch.cat([norm_t, norm_v], dim=1))  # [B, L+N, D]
        return video + gate * out[:, n:], text + t_gate * out[:, :n], attn_out


class _AdaNormOut(nn.Module):
    """diffusers ``AdaLayerNorm(chunk_dim=1)``: shift then scale from the time embedding."""

    def __init__(self, time_dim: int, dim: int, eps: float, ops: Ops, dtype: DType,
                 device: Device) -> None:
        super().__init__()
        self.linear = ops.Linear(time_dim, 2 * dim, dtype=dtype, device=device)
        self.norm = ops.LayerNorm(dim, eps=eps, elementwise_affine=True, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(temb)).chunk(2, dim=1)  # 2 x [B, D]
        return self.norm(x) * (1 + scale[:, None, :]) + shift[:, None, :]


class CogVideoXTransformer(nn.Module):
    """CogVideoX diffusion transformer for every family of :mod:`cogvideox_core.families`.

    Layers come from ``ops`` (``Linear``, ``Conv2d``, ``LayerNorm``) built with ``dtype`` and
    ``device``; attention is the one ``attention(q, k, v, heads)`` call per block, with
    q, k, v [B, S, heads*head_dim] (per-head qk-norm and RoPE already applied). Positional
    tables are computed here for any allowed size; the last one of each kind is cached per
    (grid, device, dtype). See the module docstring for the sequence arithmetic and the rules.
    """

    def __init__(self, config: TransformerConfig, ops: Ops = default_ops,  # type: ignore[assignment]
                 dtype: torch.dtype | None = None, device: Device = None,
                 attention: AttentionFn = sdpa_attention) -> None:
        super().__init__()
        _check_config(config)
        self.config, self.attention = config, attention
        kw = dict(ops=ops, dtype=dtype, device=device)
        d = config.inner_dim
        self.patch_embed = _PatchEmbed(config, **kw)
        self.time_embedding = _TimestepMLP(d, config.time_embed_dim, **kw)
        self.ofs_embedding = (_TimestepMLP(config.ofs_embed_dim, config.ofs_embed_dim, **kw)
                              if config.ofs_embed_dim else None)
        self.transformer_blocks = nn.ModuleList([_Block(config, **kw) for _ in range(config.num_layers)])
        self.norm_final = ops.LayerNorm(d, eps=config.norm_eps, elementwise_affine=True,
                                        dtype=dtype, device=device)
        self.norm_out = _AdaNormOut(config.time_embed_dim, d, config.norm_eps, **kw)
        per_token = config.patch_size ** 2 * (config.patch_size_t or 1) * config.out_channels
        self.proj_out = ops.Linear(d, per_token, dtype=dtype, device=device)
        self._cache: dict[str, tuple[tuple, object]] = {}
        self._warned_learned = False

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Moving or casting the model drops the cached tables (they hold device memory)."""
        self._cache.clear()
        return super()._apply(fn, recurse)

    # ---- shape rules -------------------------------------------------------------------

    def check_input(self, frames_lat: int, height_lat: int, width_lat: int, text_len: int | None = None) -> None:
        """Raise ``ValueError`` naming the parameter, value and rule for a size this family
        cannot take. Sizes are latent units (pixels / 8, frames (pixels - 1) / 4 + 1);
        ``text_len`` None: the text states are not known yet (:func:`fit_text` fits them)."""
        cfg, p = self.config, self.config.patch_size
        sizes = [("frames_lat", frames_lat), ("height_lat", height_lat), ("width_lat", width_lat)]
        for name, value in sizes + ([] if text_len is None else [("text_len", text_len)]):
            if value < 1:
                raise ValueError(f"{name}={value} must be at least 1")
        for name, value in (("height_lat", height_lat), ("width_lat", width_lat)):
            if value % p:
                raise ValueError(f"{name}={value} must be a multiple of the patch size {p} "
                                 f"(pixel sizes a multiple of {SPATIAL_COMPRESSION * p})")
        self._check_frames(frames_lat)
        self._check_grid(height_lat, width_lat)
        if text_len is not None and self._additive and text_len != cfg.max_text_len:
            raise ValueError(f"text_len={text_len} must be exactly {cfg.max_text_len} for "
                             f"positions={cfg.positions!r}: the additive table has that many text rows")

    def _check_frames(self, frames_lat: int) -> None:
        cfg = self.config
        pt = cfg.patch_size_t or 1
        if frames_lat % pt:
            raise ValueError(f"frames_lat={frames_lat} must be a multiple of patch_size_t={pt}: "
                             f"prepend {cfg.temporal_padding(frames_lat)} latent frame(s) and drop "
                             "them after sampling, as the diffusers CogVideoX 1.5 pipelines do")
        limit = cfg.max_latent_frames
        if limit is not None and frames_lat > limit:
            raise ValueError(f"frames_lat={frames_lat} exceeds {limit}: the resized sincos table of "
                             f"this model (CogVideoX-Fun 2B) has {limit} latent frames "
                             f"({cfg.sample_frames} pixel frames)")

    def _check_grid(self, height_lat: int, width_lat: int) -> None:
        cfg, s = self.config, SPATIAL_COMPRESSION
        fixed, top = cfg.fixed_latent_size, cfg.max_latent_size
        if fixed is not None and (height_lat, width_lat) != fixed:
            raise ValueError(f"height_lat x width_lat={height_lat}x{width_lat} must be "
                             f"{fixed[0]}x{fixed[1]}: the learned positional table "
                             f"only covers the trained size ({s * fixed[0]}x{s * fixed[1]} px)")
        if top is not None:
            for name, value, most in (("height_lat", height_lat, top[0]), ("width_lat", width_lat, top[1])):
                if value > most:
                    raise ValueError(f"{name}={value} exceeds {most}: the RoPE table of the "
                                     f"CogVideoX 1.5 families has {most // cfg.patch_size} "
                                     f"positions per axis ({s * most} px)")

    @property
    def _additive(self) -> bool:
        """Whether an additive table with text rows is added (sincos kinds and learned)."""
        return _has_text_rows(self.config)

    # ---- forward -----------------------------------------------------------------------

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, text_states: torch.Tensor,
                ofs: torch.Tensor | None = None, blocks: BlockRunner | None = None) -> torch.Tensor:
        """v-prediction [B, F, C_out, H, W] for latents x [B, F, C_in, H, W], timesteps [B]
        (0..999, float or int; a single value is broadcast) and T5 states ``text_states``
        [B, L, text_dim]. ``blocks`` runs the block stack instead of the plain loop (a step
        cache, :mod:`cogvideox_core.models.step_cache`); None: every block."""
        b, f, _, h, w = self._check_tensors(x, text_states)
        self.check_input(f, h, w, text_states.shape[1])
        temb = self._time_embedding(timestep, ofs, b, x)  # [B, time_dim]
        tokens = self._add_positions(self.patch_embed(x, text_states), f, h, w)  # [B, L+N, D]
        n = text_states.shape[1]
        text, video = tokens[:, :n], tokens[:, n:]  # [B, L, D], [B, N, D]
        rope = self._rope(self._grid(f, h, w), x.device)
        if blocks is None:
            video, text = run_all_blocks(self.transformer_blocks, video, text, temb, rope, self.attention)
        else:
            video, text = blocks.run(self.transformer_blocks, video, text, temb, rope, self.attention)
        video = self.norm_out(self.norm_final(video), temb)  # [B, N, D]
        return self._unpatchify(self.proj_out(video), b, f, h, w)

    def _check_tensors(self, x: torch.Tensor, text_states: torch.Tensor) -> tuple[int, ...]:
        cfg = self.config
        if x.ndim != 5 or x.shape[2] != cfg.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected [B, F, {cfg.in_channels}, H, W] "
                             "(frames before channels)")
        t = text_states
        if t.ndim != 3 or t.shape[0] != x.shape[0] or t.shape[2] != cfg.text_dim:
            raise ValueError(f"text_states has shape {tuple(t.shape)}; expected "
                             f"[{x.shape[0]}, L, {cfg.text_dim}] (T5 states)")
        return tuple(x.shape)

    def _time_embedding(self, timestep: torch.Tensor | float, ofs: torch.Tensor | float | None,
                        batch: int, x: torch.Tensor) -> torch.Tensor:
        """Sinusoidal in float32, cast to x's dtype, then the MLP (diffusers' order)."""
        t = _per_batch("timestep", timestep, batch, x.device)  # [B]
        cfg = self.config
        t_emb = timestep_embedding(t, cfg.inner_dim, cfg.flip_sin_to_cos, cfg.freq_shift)  # [B, D] f32
        emb = self.time_embedding(t_emb.to(x.dtype))  # [B, time_dim]
        if self.ofs_embedding is None:
            if ofs is not None:
                raise ValueError(f"ofs={ofs!r} given to a model without an ofs embedding "
                                 "(only 1.5-I2V has one)")
            return emb
        # a single ofs stays [1] and its embedding broadcasts over the batch, as in diffusers
        o = _per_batch("ofs", cfg.default_ofs if ofs is None else ofs, batch, x.device, expand=False)
        o = timestep_embedding(o, cfg.ofs_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift)  # [1|B, ofs]
        return emb + self.ofs_embedding(o.to(x.dtype))

    def _unpatchify(self, out: torch.Tensor, b: int, f: int, h: int, w: int) -> torch.Tensor:
        p, pt = self.config.patch_size, self.config.patch_size_t
        if pt is None:
            out = out.reshape(b, f, h // p, w // p, -1, p, p)  # [B, F, H/p, W/p, C, p, p]
            out = out.permute(0, 1, 4, 2, 5, 3, 6)  # [B, F, C, H/p, p, W/p, p]
            return out.flatten(5, 6).flatten(3, 4)  # [B, F, C, H, W]
        out = out.reshape(b, f // pt, h // p, w // p, -1, pt, p, p)  # [B, F/pt, H/p, W/p, C, pt, p, p]
        out = out.permute(0, 1, 5, 4, 2, 6, 3, 7)  # [B, F/pt, pt, C, H/p, p, W/p, p]
        return out.flatten(6, 7).flatten(4, 5).flatten(1, 2)  # [B, F, C, H, W]

    # ---- positions ---------------------------------------------------------------------

    def _grid(self, f: int, h: int, w: int) -> Grid:
        """Token grid (F/pt, H/p, W/p) of a latent size."""
        p = self.config.patch_size
        return f // (self.config.patch_size_t or 1), h // p, w // p

    def _cached(self, kind: str, key: tuple, build) -> object:
        """One cached value per kind: rebuilt whenever the key (grid, device, dtype) changes."""
        hit = self._cache.get(kind)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = build()
        self._cache[kind] = (key, value)
        return value

    def _add_positions(self, tokens: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
        """tokens [B, L+N, D] plus the additive table [1, L+N, D] of this family, if any."""
        if not self._additive:
            return tokens
        cfg = self.config
        if cfg.learned_positions and pixel_frames(f, cfg.temporal_compression) == cfg.sample_frames:
            return tokens + self.patch_embed.pos_embedding.to(tokens)
        if cfg.learned_positions:
            self._warn_learned_fallback(f)
        key = (self._grid(f, h, w), tokens.device, tokens.dtype)
        return tokens + self._cached("additive", key, lambda: self._additive_table(key[0], tokens))

    def _additive_table(self, grid: Grid, like: torch.Tensor) -> torch.Tensor:
        """[1, max_text_len + N, D]: zeros on the text rows, the sincos kind on the video rows."""
        cfg = self.config
        if cfg.positions == "sincos_resized":
            p = cfg.patch_size
            sample = (cfg.sample_latent_frames, cfg.sample_height // p, cfg.sample_width // p)
            video = sincos_resized(cfg.inner_dim, sample, grid, cfg.spatial_interpolation_scale,
                                   cfg.temporal_interpolation_scale, like.device)  # [N, D] float32
        else:
            video = sincos_3d(cfg.inner_dim, grid, cfg.spatial_interpolation_scale,
                              cfg.temporal_interpolation_scale, like.device)  # [N, D] float64
        logger.debug("built %s positional table for grid %s", cfg.positions, grid)
        text = video.new_zeros(cfg.max_text_len, cfg.inner_dim)  # [L, D]
        return torch.cat([text, video], dim=0)[None].to(like.dtype)  # [1, L+N, D]

    def _warn_learned_fallback(self, f: int) -> None:
        if not self._warned_learned:
            logger.warning("frames_lat=%d differs from the %d latent frames of the learned positional "
                           "table; using a recomputed sincos table instead, as diffusers does",
                           f, self.config.sample_latent_frames)
            self._warned_learned = True

    def _rope(self, grid: Grid, device: torch.device) -> Rope | None:
        """(cos, sin) [N, head_dim] float32 for the video tokens, or None without RoPE."""
        cfg = self.config
        if not cfg.uses_rope:
            return None

        def build() -> Rope:
            if cfg.positions == "rope_slice":
                positions = rope_positions_slice(grid, device)
            else:
                p = cfg.patch_size
                base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
                positions = rope_positions_linspace(grid, base_h, base_w, device)
            return rope_3d(cfg.head_dim, positions)
        return self._cached("rope", (grid, device), build)  # type: ignore[return-value]


def _per_batch(name: str, value: torch.Tensor | float, batch: int, device: torch.device,
               expand: bool = True) -> torch.Tensor:
    """A scalar or [1] value as [B] (or [1] without ``expand``); a [B] value checked."""
    t = torch.as_tensor(value, device=device).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch) if expand else t
    if t.numel() != batch:
        raise ValueError(f"{name} has {t.numel()} values; expected 1 or the batch size {batch}")
    return t


__all__ = ["CogVideoXTransformer", "BlockRunner", "run_all_blocks", "fit_text", "text_rows_read"]
