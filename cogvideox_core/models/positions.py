"""Positional encodings of the CogVideoX transformer, as pure functions of sizes.

Every function here reproduces, operation for operation, what diffusers 0.42 computes
(``models/embeddings.py``: ``get_timestep_embedding``, ``get_3d_sincos_pos_embed``,
``get_3d_rotary_pos_embed``, ``apply_rotary_emb``; ``pipelines/cogvideo``:
``get_resize_crop_region_for_grid``) or the CogVideoX-Fun reference (the resized 2B table), so
that the results are bit-identical in float32. Grids are in patch units throughout: ``frames``
is the number of token frames (latent frames / patch_size_t), ``height``/``width`` the latent
size divided by patch_size.

Token order is frame-major then row-major: token ``t*H*W + i*W + j`` is frame ``t``, row ``i``,
column ``j``; every table below is laid out in that order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Grid = tuple[int, int, int]  # (frames, height, width) in patch units


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of timesteps [B] -> [B, dim] in float32 (diffusers' DDPM form)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # [half]
    args = t[:, None].float() * freqs[None, :]  # [B, half]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # [B, 2*half]
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)  # cos first
    if dim % 2:
        emb = F.pad(emb, (0, 1, 0, 0))  # [B, dim]
    return emb


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim] float64 as ``[sin(pos*w) | cos(pos*w)]``, w = 10000^(-2i/dim)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = torch.outer(pos.reshape(-1).double(), omega)  # [M, dim/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # [M, dim]


def sincos_3d(dim: int, grid: Grid, spatial_scale: float, temporal_scale: float,
              device: torch.device | None = None) -> torch.Tensor:
    """Additive 3D sincos table [T*H*W, dim] (float64) for a (T, H, W) token grid.

    Channels: dim/4 temporal, then 3*dim/4 spatial split in two halves, the first encoding the
    column (w) and the second the row (h) -- diffusers' order, which names them the other way
    round. Positions are ``index / scale`` computed in float32 (as diffusers does).
    """
    frames, height, width = grid
    dim_t, dim_s = dim // 4, 3 * dim // 4
    pos_w = torch.arange(width, dtype=torch.float32, device=device) / spatial_scale
    pos_h = torch.arange(height, dtype=torch.float32, device=device) / spatial_scale
    pos_t = torch.arange(frames, dtype=torch.float32, device=device) / temporal_scale
    w_of_token = pos_w[None, :].expand(height, width)  # [H, W]
    h_of_token = pos_h[:, None].expand(height, width)  # [H, W]
    spatial = torch.cat([sincos_1d(dim_s // 2, w_of_token), sincos_1d(dim_s // 2, h_of_token)], dim=1)
    spatial = spatial[None].expand(frames, -1, -1)  # [T, H*W, dim_s]
    temporal = sincos_1d(dim_t, pos_t)[:, None, :].expand(-1, height * width, -1)  # [T, H*W, dim_t]
    return torch.cat([temporal, spatial], dim=-1).reshape(frames * height * width, dim)


def sincos_resized(dim: int, sample_grid: Grid, grid: Grid, spatial_scale: float,
                   temporal_scale: float, device: torch.device | None = None) -> torch.Tensor:
    """CogVideoX-Fun 2B table [T*H*W, dim] (float32): the sample-grid sincos table resized.

    As the Fun reference does: the table of the trained grid (T0, H0, W0) = (13, 30, 45) is
    stored in float32, resized with ``F.interpolate(mode="trilinear", align_corners=False)`` to
    (T0, H, W) -- time keeps its T0 frames, so the temporal axis is untouched -- and the first
    ``T`` frames are kept. Hence at most T0 frames, and at the sample size the result is the
    plain sincos table.
    """
    t0, h0, w0 = sample_grid
    frames, height, width = grid
    if frames > t0:
        raise ValueError(f"frames={frames} token frames exceed the {t0} of the resized sincos table")
    table = sincos_3d(dim, sample_grid, spatial_scale, temporal_scale, device).float()  # [T0*H0*W0, D]
    table = table.reshape(1, t0, h0, w0, dim).permute(0, 4, 1, 2, 3)  # [1, D, T0, H0, W0]
    table = F.interpolate(table, size=(t0, height, width), mode="trilinear", align_corners=False)
    table = table.permute(0, 2, 3, 4, 1)[0, :frames]  # [T, H, W, D]
    return table.reshape(frames * height * width, dim)


def resize_crop_region(grid_h: int, grid_w: int, base_h: int, base_w: int
                       ) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, left), (bottom, right)) of a (grid_h, grid_w) grid fitted in the base grid.

    The grid is scaled to touch the base grid on its relatively longer side, keeping the aspect
    ratio, and centred (diffusers' ``get_resize_crop_region_for_grid``).
    """
    if grid_h / grid_w > base_h / base_w:
        resize_h, resize_w = base_h, int(round(base_h / grid_h * grid_w))
    else:
        resize_w, resize_h = base_w, int(round(base_w / grid_w * grid_h))
    top = int(round((base_h - resize_h) / 2.0))
    left = int(round((base_w - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


def rope_positions_linspace(grid: Grid, base_h: int, base_w: int,
                            device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """CogVideoX 1.0 RoPE positions (t, h, w), float32: the spatial grid is fitted inside the
    base grid (sample size / patch) and sampled by ``linspace`` over the crop region, so any
    size interpolates inside the trained range; time is 0..T-1."""
    frames, height, width = grid
    (top, left), (bottom, right) = resize_crop_region(height, width, base_h, base_w)
    kw = dict(device=device, dtype=torch.float32)
    # diffusers' end points: stop * (n - 1) / n, i.e. the crop region sampled without its far edge
    pos_h = torch.linspace(top, bottom * (height - 1) / height, height, **kw)
    pos_w = torch.linspace(left, right * (width - 1) / width, width, **kw)
    pos_t = torch.linspace(0, frames * (frames - 1) / frames, frames, **kw)
    return pos_t, pos_h, pos_w


def rope_positions_slice(grid: Grid, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """CogVideoX 1.5 RoPE positions (t, h, w): plain integers 0..n-1 on every axis (the first
    rows of diffusers' max-size table; the caller checks the grid fits in it)."""
    return tuple(torch.arange(n, device=device, dtype=torch.float32) for n in grid)


def _rope_1d(dim: int, pos: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [M, dim] float32; adjacent channel pairs share one frequency."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim))
    angles = torch.outer(pos, freqs)  # [M, dim/2]
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def rope_3d(head_dim: int, positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
            theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T*H*W, head_dim] float32 from per-axis positions.

    The head dim is split t: head_dim/4, h and w: 3*head_dim/8 each (16/24/24 for 64).
    """
    pos_t, pos_h, pos_w = positions
    frames, height, width = len(pos_t), len(pos_h), len(pos_w)
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    axes = [_rope_1d(d, p, theta) for d, p in zip(dims, positions)]  # per axis: ([n, d], [n, d])
    out = []
    for part in (0, 1):  # 0: cos, 1: sin
        t = axes[0][part][:, None, None, :].expand(-1, height, width, -1)  # [T, H, W, d_t]
        h = axes[1][part][None, :, None, :].expand(frames, -1, width, -1)  # [T, H, W, d_h]
        w = axes[2][part][None, None, :, :].expand(frames, height, -1, -1)  # [T, H, W, d_w]
        out.append(torch.cat([t, h, w], dim=-1).reshape(frames * height * width, head_dim))
    return out[0], out[1]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, S, heads, D] by cos/sin [S, D] (pairs (2i, 2i+1) rotate together), in float32."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)  # [B, S, heads, D/2, 2]
    real, imag = pairs.unbind(-1)  # [B, S, heads, D/2] each
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)  # [B, S, heads, D]
    cos, sin = cos[:, None, :], sin[:, None, :]  # [S, 1, D]
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


__all__ = ["timestep_embedding", "sincos_1d", "sincos_3d", "sincos_resized", "resize_crop_region",
           "rope_positions_linspace", "rope_positions_slice", "rope_3d", "apply_rope"]
