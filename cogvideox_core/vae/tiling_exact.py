"""Exact tiled execution of the causal VAE, one layer at a time over a frame chunk.

Each layer's full-frame output is an :class:`Act` on the *store* device (the compute device when
it fits, else the offload device); the layer runs region by region on the compute device, each
region reading its input with a 1-pixel halo, so nothing is blended and every value equals the
untiled one up to float summation order. GroupNorm, what makes other tilers differ, uses the
statistics of the whole activation, accumulated while it is written and merged across regions
(README "How it works"). Causal tails are full-frame tensors on the store, keyed like
:class:`~cogvideox_core.vae.model.DecoderCache`.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, MutableMapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tiling_plan import (HALO, Region, downsample_source, downsampled_size, regions_for_budget, split_region,
                          upsample_source, with_halo)
from .blocks import (CausalConv3d, Decoder3D, Downsample3D, Encoder3D, ResnetBlock3D, SpatialNorm3D,
                         Upsample3D, conv3d_in_time_parts, double_time_and_space, halve_time, resize_zq)

logger = logging.getLogger(__name__)

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
Tails = MutableMapping[str, Tensor]  # conv path -> full-frame tail [B, C_in, 2, H, W] on the store


@dataclass
class Workspace:
    """Where and how a tiled run computes. ``budget`` is the most elements one region tensor may
    hold; an out-of-memory error halves it (for the rest of the run) and splits the region."""

    device: torch.device
    store: torch.device
    dtype: torch.dtype
    budget: int
    check_interrupt: Callable[[], None] = lambda: None
    ooms: int = 0

    def empty(self, *shape: int) -> Tensor:
        """A store tensor [B, C, T, H, W], channels-last like the region buffers (plain copies)."""
        return torch.empty(shape, device=self.store, dtype=self.dtype, memory_format=torch.channels_last_3d)

    def run_regions(self, height: int, width: int, per_pixel: int, fn: Callable[[Region], None]) -> None:
        """``fn(region)`` over regions covering the frame, each holding at most ``budget`` elements
        (``per_pixel`` per pixel, halo included). ``fn`` writes its results only at its end, so a
        region that runs out of memory is redone in halves and no finished region is lost."""
        smallest = (1 + 2 * HALO) ** 2  # a 1-pixel region with its halo
        queue = deque(regions_for_budget(height, width, max(self.budget // per_pixel, smallest)))
        while queue:
            region = queue.popleft()
            try:
                fn(region)
                continue
            except OutOfMemoryError:
                parts = split_region(region)
                if not parts:
                    raise
            self._after_oom(region)
            queue.extendleft(reversed(parts))
        self.check_interrupt()

    def _after_oom(self, region: Region) -> None:
        self.ooms += 1
        self.budget = max(self.budget // 2, 1)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.warning("out of memory on region %s; retrying it in halves, budget now %d elements",
                       region, self.budget)


@dataclass
class GroupStats:
    """GroupNorm statistics of an activation written region by region: per (sample, group) the
    count, mean and sum of squared deviations, merged in float64 (Chan et al.)."""

    groups: int
    count: int = 0
    mean: Tensor | None = None  # [B, G]
    m2: Tensor | None = None  # [B, G]

    def add(self, x: Tensor) -> None:
        """Merge a region [B, C, T, h, w] (any strides) into the running statistics: per channel
        in the region's dtype (at least float32), channels to groups in float64."""
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        var, mean = torch.var_mean(x, dim=(2, 3, 4), correction=0)  # [B, C]
        acc = torch.float32 if x.device.type == "mps" else torch.float64
        n = x[0, 0].numel()  # per channel
        mean, var = (v.to(acc).unflatten(1, (self.groups, -1)) for v in (mean, var))  # [B, G, C/G]
        group_mean = mean.mean(dim=2)
        m2 = n * (var + (mean - group_mean[..., None]).square()).sum(dim=2)
        self._merge(n * mean.shape[2], group_mean, m2)

    def merge(self, other: "GroupStats") -> None:
        """Merge the statistics of another part of the same activation."""
        if other.mean is not None and other.m2 is not None:
            self._merge(other.count, other.mean, other.m2)

    def _merge(self, n: int, mean: Tensor, m2: Tensor) -> None:
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def scale_shift(self, norm: nn.GroupNorm, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-channel (a, b) [B, C, 1, 1, 1] in float32 with ``norm(x) == x * a + b`` (the form
        ATen's own GroupNorm kernels compute)."""
        if self.mean is None or self.m2 is None:
            raise RuntimeError("GroupNorm statistics of an activation that was never written")
        if norm.num_groups != self.groups:
            raise RuntimeError(f"statistics for {self.groups} groups, norm has {norm.num_groups}")
        per = norm.num_channels // self.groups
        rstd = torch.rsqrt(self.m2 / self.count + norm.eps)  # [B, G]
        mean = self.mean.repeat_interleave(per, dim=1)  # [B, C]
        a = rstd.repeat_interleave(per, dim=1)
        if norm.weight is not None:
            a = a * norm.weight.to(device=a.device, dtype=a.dtype)
        b = -mean * a
        if norm.bias is not None:
            b = b + norm.bias.to(device=a.device, dtype=a.dtype)
        shape = (*a.shape, 1, 1, 1)
        return a.reshape(shape).to(device, torch.float32), b.reshape(shape).to(device, torch.float32)


@dataclass
class Act:
    """A full-frame activation of one chunk [B, C, T, H, W] (on the store) and, when a norm
    reads it next, its GroupNorm statistics."""

    data: Tensor
    stats: GroupStats | None = None

    def take(self) -> "Act":
        """This activation as a new object, this one emptied: a pass that consumes its input
        takes it, so the caller's reference does not keep the tensor alive during the pass."""
        taken = Act(self.data, self.stats)
        self.data, self.stats = None, None  # type: ignore[assignment]
        return taken


@dataclass
class Norm:
    """GroupNorm then SiLU as ``silu(x * a + b)``, fused into the load of a region.

    For the decoder's spatial norm ``norm(x) * y + s`` (``y``, ``s``: 1x1 convs of the latent
    chunk, nearest-resized) is folded into ``x * (a y) + (b y + s)``: ``a`` and ``b`` stay at latent
    size, [B, C, T_lat, h, w], and are upsampled per region and frame (a 1x1 conv commutes with
    nearest resizing, so the small latents are convolved, not the resized ones).
    """

    a: Tensor  # [B, C, 1, 1, 1] float32, or [B, C, T_lat, h, w] (spatial)
    b: Tensor
    scale: int = 0  # spatial: feature pixels per latent pixel
    times: tuple[int, ...] = ()  # spatial: the latent frame of every frame

    @classmethod
    def make(cls, ws: Workspace, module: nn.Module, act: Act, zq: Tensor | None = None) -> "Norm":
        if act.stats is None:
            raise RuntimeError("a norm reads an activation written without statistics")
        if not isinstance(module, SpatialNorm3D):
            return cls(*act.stats.scale_shift(module, ws.device))
        if zq is None:
            raise RuntimeError("a spatial norm needs the latent chunk zq")
        a, b = act.stats.scale_shift(module.norm_layer, ws.device)  # [B, C, 1, 1, 1]
        times, scale = _zq_resize(zq.shape[2:], act.data.shape[2:])
        y = conv3d_in_time_parts(module.conv_y.conv, zq).float()  # [B, C, T_lat, h, w]
        shift = conv3d_in_time_parts(module.conv_b.conv, zq).float()
        fmt = torch.channels_last_3d
        return cls((a * y).contiguous(memory_format=fmt), (b * y + shift).contiguous(memory_format=fmt),
                   scale, times)

    def load_(self, dst: Tensor, src: Tensor, region: Region) -> None:
        """``dst = silu(norm(src))`` for ``src`` the ``region`` of the activation (any device,
        [B, C, T, h, w]) and ``dst`` of that shape on the compute device."""
        if not self.scale:
            torch.addcmul(self.b, src.to(dst.device), self.a, out=dst)
        else:
            r0, r1, c0, c1 = region
            s = self.scale
            lat = (r0 // s, -(-r1 // s), c0 // s, -(-c1 // s))  # latent pixels under the region
            crop = (r0 - lat[0] * s, r1 - lat[0] * s, c0 - lat[2] * s, c1 - lat[2] * s)
            last, a, b = -1, None, None
            for t, frame in enumerate(self.times):
                if frame != last:  # consecutive frames share a latent frame
                    a, b = (_slice(_upsample(_slice(m[:, :, frame], lat), s), crop) for m in (self.a, self.b))
                    last = frame
                torch.addcmul(b, src[:, :, t].to(dst.device), a, out=dst[:, :, t])
        F.silu(dst, inplace=True)


def _upsample(x: Tensor, scale: int) -> Tensor:
    return x if scale == 1 else F.interpolate(x, scale_factor=float(scale), mode="nearest")


def _zq_resize(src: torch.Size, size: torch.Size) -> tuple[tuple[int, ...], int]:
    """How :func:`resize_zq` maps latents (T, h, w) onto a feature map (T', H, W): the latent frame
    of every frame (a ramp through the same function), and the integer spatial factor."""
    t, h, w = src
    ramp = torch.arange(t, dtype=torch.float32).reshape(1, 1, t, 1, 1).expand(1, 1, t, h, w)
    frames = resize_zq(ramp, (size[0], h, w))[0, 0, :, 0, 0].round().long().tolist()
    scale = size[1] // h
    if (size[1], size[2]) != (scale * h, scale * w):
        raise RuntimeError(f"feature size {tuple(size)} is not an integer multiple of the latents {tuple(src)}")
    return tuple(frames), scale


def _slice(x: Tensor, region: Region) -> Tensor:
    r0, r1, c0, c1 = region
    return x[..., r0:r1, c0:c1]


def _relative(region: Region, outer: Region) -> Region:
    return region[0] - outer[0], region[1] - outer[0], region[2] - outer[2], region[3] - outer[2]


def conv_pass(ws: Workspace, src: Act, conv: CausalConv3d, tails: Tails, key: str, *,
              norm: Norm | None = None, residual: Act | None = None, shortcut: nn.Module | None = None,
              dst: Tensor | None = None, stats: bool = True, groups: int = 0) -> Act:
    """``conv(silu(norm(src)))`` (+ ``residual``, through ``shortcut`` if given) written into ``dst``
    (new on the store if None; may be ``residual.data`` itself: each region reads the residual
    only where it writes). Updates ``tails[key]`` to the new tail: in place after the first chunk,
    so the cache's buffers live as long as the video (allocated once, no heap churn)."""
    b, c, t, h, w = src.data.shape
    k = conv.time_kernel
    old_tail = tails.get(key)
    c_out = conv.conv.out_channels
    out = ws.empty(b, c_out, t, h, w) if dst is None else dst
    new_tail = ws.empty(b, c, k - 1, h, w)
    acc = GroupStats(groups) if stats else None

    def region_fn(region: Region) -> None:
        outer = with_halo(region, h, w)
        # channels-last: oneDNN convolves it without a reordered copy of the input
        buf = torch.empty((b, c, k - 1 + t, outer[1] - outer[0], outer[3] - outer[2]), device=ws.device,
                          dtype=ws.dtype, memory_format=torch.channels_last_3d)
        if norm is None:
            buf[:, :, k - 1:].copy_(_slice(src.data, outer))
        else:
            norm.load_(buf[:, :, k - 1:], _slice(src.data, outer), outer)
        if old_tail is None:  # a video's first chunk: the first frame repeated in front
            buf[:, :, :k - 1].copy_(buf[:, :, k - 1:k].expand(-1, -1, k - 1, -1, -1))
        else:
            buf[:, :, :k - 1].copy_(_slice(old_tail, outer))
        inner = _relative(region, outer)
        y = _slice(conv3d_in_time_parts(conv.conv, buf), inner)  # [B, C_out, T, rh, rw]
        _slice(new_tail, region).copy_(_slice(buf[:, :, -(k - 1):], inner))
        del buf
        if residual is not None:  # frame by frame: the (wide) skip input is never region-sized
            for i in range(t):
                skip = _slice(residual.data[:, :, i:i + 1], region).to(device=ws.device, dtype=ws.dtype)
                y[:, :, i:i + 1].add_(skip if shortcut is None else shortcut(skip))
        if acc is not None:
            acc.add(y)
        _slice(out, region).copy_(y)  # the only write to `out`: a region redone after OOM is safe

    ws.run_regions(h, w, b * max(c * (t + k - 1), c_out * t), region_fn)
    if old_tail is None:
        tails[key] = new_tail
    else:  # regions read the old tail around themselves: it is replaced only once all are done
        old_tail.copy_(new_tail)
    return Act(out, acc)


def upsample_pass(ws: Workspace, src: Act, up: Upsample3D, groups: int) -> Act:
    """Nearest 2x (time too with ``compress_time``) and a 3x3 conv, region by region and frame by
    frame (each output frame reads one source frame)."""
    src = src.take()
    b, c, t, h, w = src.data.shape
    times = _upsampled_time_sources(t) if up.compress_time else list(range(t))
    h2, w2 = 2 * h, 2 * w
    out = ws.empty(b, up.conv.out_channels, len(times), h2, w2)
    acc = GroupStats(groups)

    def region_fn(region: Region) -> None:
        source, crop = upsample_source(region, h2, w2)
        inner = _relative(region, with_halo(region, h2, w2))
        part = GroupStats(groups)
        for i, j in enumerate(times):
            x = _slice(src.data[:, :, j], source).to(device=ws.device, dtype=ws.dtype)  # [B, C, hs, ws]
            x = _slice(F.interpolate(x, scale_factor=2.0), crop)  # the conv input over the halo region
            y = _slice(up.conv(x), inner)[:, :, None]  # [B, C, 1, rh, rw]
            part.add(y)
            _slice(out[:, :, i:i + 1], region).copy_(y)
        acc.merge(part)  # merged last: a region redone after OOM is counted once

    ws.run_regions(h2, w2, 2 * b * c, region_fn)
    return Act(out, acc)


def _upsampled_time_sources(frames: int) -> list[int]:
    """Source frame of every output frame of :func:`double_time_and_space` (ramp through it)."""
    ramp = torch.arange(frames, dtype=torch.float32).reshape(1, 1, frames, 1, 1)
    return double_time_and_space(ramp)[0, 0, :, 0, 0].round().long().tolist()


def downsample_pass(ws: Workspace, src: Act, down: Downsample3D, groups: int) -> Act:
    """Time halving (``compress_time``), pad right/bottom by one zero, 3x3 stride-2 conv, region
    by region and frame by frame."""
    src = src.take()
    b, c, t, h, w = src.data.shape
    if down.compress_time:  # output frame i averages frames a:b (one frame: kept as is)
        first = t % 2
        spans = ([(0, 1)] if first and t > 1 else []) + [(a, a + 2) for a in range(first, t - 1, 2)]
        spans = spans or [(0, 1)]
    else:
        spans = [(i, i + 1) for i in range(t)]
    h2, w2 = downsampled_size(h), downsampled_size(w)
    out = ws.empty(b, down.conv.out_channels, len(spans), h2, w2)
    acc = GroupStats(groups)

    def region_fn(region: Region) -> None:
        source, (pad_bottom, pad_right) = downsample_source(region, h, w)
        part = GroupStats(groups)
        for i, (start, end) in enumerate(spans):
            x = _slice(src.data[:, :, start:end], source).to(device=ws.device, dtype=ws.dtype)
            x = halve_time(x)[:, :, 0]  # [B, C, hs, ws]
            y = down.conv(F.pad(x, (0, pad_right, 0, pad_bottom)))[:, :, None]  # exactly the region
            part.add(y)
            _slice(out[:, :, i:i + 1], region).copy_(y)
        acc.merge(part)

    ws.run_regions(h2, w2, 8 * b * c, region_fn)
    return Act(out, acc)


def resnet_pass(ws: Workspace, x: Act, block: ResnetBlock3D, tails: Tails, prefix: str, zq: Tensor | None,
                stats: bool, groups: int) -> Act:
    """norm-silu-conv1, norm-silu-conv2 plus the skip, keeping at most ``x`` and ``h`` (conv1's
    output) on the store: the output overwrites ``x`` (each region reads the skip only where it
    writes). A narrowing 1x1 shortcut is first written over ``x``'s leading channels, once conv1
    no longer needs ``x``; the result is then compacted."""
    x = x.take()
    h = conv_pass(ws, x, block.conv1, tails, f"{prefix}.conv1", norm=Norm.make(ws, block.norm1, x, zq),
                  groups=groups)
    norm2 = Norm.make(ws, block.norm2, h, zq)
    shortcut, narrowed = block.conv_shortcut, False
    owned = x.data.device == ws.store and x.data.dtype == ws.dtype
    if shortcut is not None and owned and shortcut.out_channels <= shortcut.in_channels:
        x, shortcut, narrowed = Act(shortcut_pass(ws, x.data, shortcut)), None, True
    out = conv_pass(ws, h, block.conv2, tails, f"{prefix}.conv2", norm=norm2, residual=x, shortcut=shortcut,
                    dst=x.data if shortcut is None and owned else None, stats=stats, groups=groups)
    del h, x
    if narrowed:  # free the wide storage: [B, C_out] of [B, C_in] channels
        out = Act(out.data.clone(memory_format=torch.contiguous_format), out.stats)
    return out


def shortcut_pass(ws: Workspace, x: Tensor, shortcut: nn.Module) -> Tensor:
    """``x[:, :C_out] = shortcut(x)`` in place, region by region (a region reads and writes only
    itself), for a 1x1x1 conv from C_in to C_out <= C_in channels; returns that view."""
    b, c, t, h, w = x.shape
    narrow = x[:, :shortcut.out_channels]

    def region_fn(region: Region) -> None:
        frames = [shortcut(_slice(x[:, :, i:i + 1], region).to(device=ws.device, dtype=ws.dtype))
                  for i in range(t)]
        _slice(narrow, region).copy_(torch.cat(frames, dim=2))  # written after every read of the region

    ws.run_regions(h, w, 2 * b * shortcut.out_channels * t, region_fn)
    return narrow


def _resnets(ws: Workspace, blocks: nn.ModuleList, prefix: str, x: Act, tails: Tails, zq: Tensor | None,
             last_stats: bool, groups: int) -> Act:
    for i, block in enumerate(blocks):
        x = resnet_pass(ws, x, block, tails, f"{prefix}.resnets.{i}", zq,
                        stats=last_stats or i < len(blocks) - 1, groups=groups)
    return x


def decode_chunk(ws: Workspace, decoder: Decoder3D, z: Tensor, tails: Tails, out: Tensor, groups: int) -> None:
    """One latent chunk z [B, C_lat, n, h, w] (on the compute device, compute dtype) decoded into
    ``out`` [B, 3, T, 8h, 8w] (any device); ``tails`` (empty for a first chunk) are updated."""
    x = conv_pass(ws, Act(z), decoder.conv_in, tails, "conv_in", groups=groups)
    x = _resnets(ws, decoder.mid_block.resnets, "mid_block", x, tails, z, True, groups)
    for i, block in enumerate(decoder.up_blocks):
        up = block.upsamplers[0] if block.upsamplers is not None else None
        x = _resnets(ws, block.resnets, f"up_blocks.{i}", x, tails, z, up is None, groups)
        if up is not None:
            x = upsample_pass(ws, x, up, groups)
    norm = Norm.make(ws, decoder.norm_out, x, z)
    conv_pass(ws, x.take(), decoder.conv_out, tails, "conv_out", norm=norm, dst=out, stats=False)


def encode_chunk(ws: Workspace, encoder: Encoder3D, x: Tensor, tails: Tails, out: Tensor, groups: int) -> None:
    """One frame chunk x [B, 3, T, H, W] (any device) encoded into moments ``out``
    [B, 2 C_lat, T', H/8, W/8]; ``tails`` (empty for a first chunk) are updated."""
    act = conv_pass(ws, Act(x), encoder.conv_in, tails, "conv_in", groups=groups)
    for i, block in enumerate(encoder.down_blocks):
        down = block.downsamplers[0] if block.downsamplers is not None else None
        act = _resnets(ws, block.resnets, f"down_blocks.{i}", act, tails, None, down is None, groups)
        if down is not None:
            act = downsample_pass(ws, act, down, groups)
    act = _resnets(ws, encoder.mid_block.resnets, "mid_block", act, tails, None, True, groups)
    norm = Norm.make(ws, encoder.norm_out, act)
    conv_pass(ws, act.take(), encoder.conv_out, tails, "conv_out", norm=norm, dst=out, stats=False)


__all__ = ["Workspace", "GroupStats", "Act", "Norm", "conv_pass", "upsample_pass", "downsample_pass",
           "resnet_pass", "decode_chunk", "encode_chunk", "OutOfMemoryError"]
