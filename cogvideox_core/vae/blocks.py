"""Layers of the CogVideoX causal 3D VAE (diffusers ``AutoencoderKLCogVideoX``), cache as values.

Module and parameter names follow diffusers exactly, so its state dict loads strict. A causal
conv with time kernel k > 1 pads with k-1 frames in front (copies of the first frame on a
video's first chunk, the previous chunk's *tail* after); tails go in and out of every
``forward`` as a dict keyed by the conv's module path. Nothing is kept on a module. The other
temporal rules depend only on the chunk's frame count (odd: causal first frame + pairs; even:
pairs), so a continuing chunk must be even (README "How it works"). Kernel-1 convs have no tail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..families import VAEConfig
from ..ops import Ops

Tails = dict[str, Tensor]  # conv module path -> its last k-1 input frames [B, C_in, k-1, H, W]

_SAFE_CONV_GIB = 2.0  # diffusers CogVideoXSafeConv3d: split time when the input is > 2 GiB at 2 bytes/value
SPATIAL_NORM_EPS = 1e-6  # diffusers hard-codes it for the spatial norm and the encoder's norm_out


@dataclass(frozen=True)
class Layers:
    """Makes the VAE's layers from the injected ``ops`` with one dtype and device."""

    ops: Ops
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None

    def conv3d(self, cin: int, cout: int, kernel: int, padding: tuple[int, int, int] = (0, 0, 0)) -> nn.Conv3d:
        return self.ops.Conv3d(cin, cout, kernel, padding=padding, dtype=self.dtype, device=self.device)

    def conv2d(self, cin: int, cout: int, stride: int, padding: int) -> nn.Conv2d:
        return self.ops.Conv2d(cin, cout, 3, stride=stride, padding=padding, dtype=self.dtype,
                               device=self.device)

    def group_norm(self, groups: int, channels: int, eps: float) -> nn.GroupNorm:
        return self.ops.GroupNorm(groups, channels, eps=eps, dtype=self.dtype, device=self.device)


def sub_tails(tails: Mapping[str, Tensor], name: str) -> Tails:
    """The entries of ``tails`` under ``name.``, with that prefix removed."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in tails.items() if k.startswith(prefix)}


def scoped(name: str, tails: Mapping[str, Tensor]) -> Tails:
    """``tails`` with every key put under ``name.``."""
    return {f"{name}.{k}": v for k, v in tails.items()}


def conv3d_in_time_parts(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """``conv(x)``, split along time above 2 GiB (at 2 bytes/value) as diffusers' SafeConv3d does,
    and along width where the CPU would convolve through a column buffer (:func:`conv3d_bounded`).

    Part i > 0 gets the last k-1 frames of part i-1 in front, so the result equals one call.
    """
    gib = x.numel() * 2 / 1024**3
    if gib <= _SAFE_CONV_GIB:
        return conv3d_bounded(conv, x)
    k = conv.kernel_size[0]
    parts = torch.chunk(x, int(gib / _SAFE_CONV_GIB) + 1, dim=2)
    outs = [conv3d_bounded(conv, parts[0])]
    for prev, cur in zip(parts, parts[1:]):
        outs.append(conv3d_bounded(conv, torch.cat([prev[:, :, -k + 1:], cur], dim=2) if k > 1 else cur))
    return torch.cat(outs, dim=2)


def conv3d_bounded(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """``conv(x)`` whose scratch memory stays within about one input's size.

    ATen convolves a CPU conv3d that oneDNN does not take (:func:`takes_column_buffer`) by
    unfolding its input into a column buffer of C_in * kT * kH * kW values per output position:
    27x the input for a 3x3x3 kernel, where the tiled VAE sizes its regions for a few
    input-sized tensors (a 32-pixel-high, 100000-pixel-wide float32 decode ran out of memory).
    There the conv runs on width strips whose buffer holds at most max(``x.numel()``,
    ``MIN_COLUMN_ELEMENTS``) values, each strip reading a ``kW // 2``-column halo, so every output
    value is computed from the same inputs and weights as in one call. A float32 conv that takes
    the buffer only by ATen's batch-1 size rule goes to oneDNN directly instead
    (:func:`_onednn_direct`): no buffer, and about 5x faster.
    """
    if not takes_column_buffer(conv, x):
        return conv(x)
    if _onednn_direct(conv, x):
        return torch.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation,
                                        conv.groups)
    if not _splits_in_width(conv):
        return conv(x)
    kt, kh, kw = conv.kernel_size
    t_out, h_out = (_conv_size(x.shape[2 + i], conv, i) for i in range(2))
    per_column = x.shape[1] // conv.groups * kt * kh * kw * t_out * h_out  # buffer values per output column
    w, limit = x.shape[4], max(x.numel(), MIN_COLUMN_ELEMENTS)
    if per_column * w <= limit:
        return conv(x)
    halo = kw // 2
    strip = max(limit // per_column - 2 * halo, MIN_STRIP_COLUMNS)
    out: Tensor | None = None
    for c0 in range(0, w, strip):
        c1 = min(c0 + strip, w)
        s0, s1 = max(c0 - halo, 0), min(c1 + halo, w)
        y = conv(x[..., s0:s1])[..., c0 - s0:c1 - s0]  # [B, C_out, T_out, H_out, c1 - c0]
        if out is None:
            out = y.new_empty((*y.shape[:4], w))
        out[..., c0:c1].copy_(y)
        del y
    assert out is not None
    return out


MIN_COLUMN_ELEMENTS = 1 << 16  # a column buffer this small (256 KiB in float32) is never split
MIN_STRIP_COLUMNS = 8  # the narrowest strip (a 1-column halo then costs at most 2 of 10 columns)
ONEDNN_MIN_INPUT = 20480  # ATen use_mkldnn: float32 batch 1 goes native unless N*C*T*H is above this


def takes_column_buffer(conv: nn.Conv3d, x: Tensor) -> bool:
    """Whether ATen runs ``conv(x)`` on the CPU through its native path's column buffer
    (``slow_conv3d``, vol2col) rather than oneDNN: ``use_mkldnn`` of ATen's Convolution.cpp
    (torch 1.x-2.x). oneDNN takes bfloat16/float16 where the CPU has the instructions, and
    float32 unless a batch-1 input to a groups-1 conv with kernel at most 3 wide has
    N*C*T*H <= 20480, whatever its width ("for some case, native is faster"): the tiny VAEs
    (8-16 channels) at every size, and the real VAE's 512-channel layers at small heights
    (512 x (2+2) frames x 6 rows for a 32-pixel-high chunk). A 1x1x1 kernel with unit stride
    and no padding needs no columns."""
    if x.device.type != "cpu":
        return False
    pointwise = all(k == 1 for k in conv.kernel_size)
    if pointwise and all(s == 1 for s in conv.stride) and not any(_padding(conv)):
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return True
    if x.dtype in (torch.bfloat16, torch.float16):
        name = "bf16" if x.dtype == torch.bfloat16 else "fp16"
        return not _onednn_supports(name)
    if x.dtype != torch.float32:
        return True
    kh, kw = conv.kernel_size[1:]
    small = (conv.groups == 1 and not (kh > 3 and kw > 3) and x.shape[0] == 1
             and math.prod(x.shape[:4]) <= ONEDNN_MIN_INPUT)
    return _native_1x1(conv, x) or small


def _onednn_direct(conv: nn.Conv3d, x: Tensor) -> bool:
    """Whether to call oneDNN directly for a float32 conv ATen would send to its column buffer
    only for its batch-1 size rule ("native is faster"): for the 8-512-channel 3x3x3 convs of the
    VAEs it is not (a tiny VAE's 16-channel conv of 11 frames of 64x96: 0.13 s native, 0.027 s
    oneDNN on 2 threads, measured 2026-12-05) and oneDNN needs no column buffer. Only for a conv
    whose ``forward`` is torch's own (a host's layer classes may cast or patch weights in theirs),
    with float32 CPU weights, zero padding given as sizes, and a torch that has the op.
    """
    return (_only_torch_forward(conv) and x.dtype == torch.float32 and x.shape[0] == 1
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu"
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch, "mkldnn_convolution") and not _native_1x1(conv, x))


def _only_torch_forward(conv: nn.Conv3d) -> bool:
    """Whether calling ``conv`` runs torch's ``Conv3d.forward`` and nothing else: no override in
    its class or on the instance, no hook on it or on every module (offloading and patching tools
    work through these)."""
    hooks = (conv._forward_hooks, conv._forward_pre_hooks, conv._backward_hooks, conv._backward_pre_hooks,
             nn.modules.module._global_forward_hooks, nn.modules.module._global_forward_pre_hooks,
             nn.modules.module._global_backward_hooks, nn.modules.module._global_backward_pre_hooks)
    return type(conv).forward is nn.Conv3d.forward and "forward" not in vars(conv) and not any(hooks)


def _native_1x1(conv: nn.Conv3d, x: Tensor) -> bool:
    """ATen's own choice for a single-threaded 1x1 conv (native is faster there)."""
    kh, kw = conv.kernel_size[1:]
    return (kh == kw == 1 and all(s == 1 for s in conv.stride) and all(d == 1 for d in conv.dilation)
            and x.shape[0] < 16 and torch.get_num_threads() == 1)


def _onednn_supports(name: str) -> bool:
    """Whether this CPU runs oneDNN convolutions in ``name`` ("bf16", "fp16"); False when this
    torch cannot tell (strips then cost time, never memory)."""
    try:
        return bool(getattr(torch.ops.mkldnn, f"_is_mkldnn_{name}_supported")())
    except (AttributeError, RuntimeError):
        return False


def _padding(conv: nn.Conv3d) -> tuple[int, ...]:
    return (1,) if isinstance(conv.padding, str) else tuple(conv.padding)


def _conv_size(size: int, conv: nn.Conv3d, axis: int) -> int:
    """Output length of ``conv`` along ``axis`` (0: time, 1: height, 2: width) for an input of ``size``."""
    pad = conv.padding[axis] if not isinstance(conv.padding, str) else conv.kernel_size[axis] // 2
    span = conv.dilation[axis] * (conv.kernel_size[axis] - 1)
    return max((size + 2 * pad - span - 1) // conv.stride[axis] + 1, 1)


def _splits_in_width(conv: nn.Conv3d) -> bool:
    """Width strips are exact for a stride-1, undilated, zero-padded 'same' width axis."""
    kw = conv.kernel_size[2]
    return (conv.stride[2] == 1 and conv.dilation[2] == 1 and not isinstance(conv.padding, str)
            and kw % 2 == 1 and conv.padding[2] == kw // 2 and conv.padding_mode == "zeros")


def conv_per_frame(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 2-D conv on every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    b, c, t, h, w = x.shape
    y = conv(x.transpose(1, 2).reshape(b * t, c, h, w))  # [B*T, C', H', W']
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)  # [B, C', T, H', W']


def halve_time(x: Tensor) -> Tensor:
    """Average frame pairs; an odd count keeps its first frame as is. [B,C,T,H,W] -> [B,C,T',H,W].
    A mean over pairs, not ``avg_pool3d``: that has no bfloat16 kernel on the CPU."""
    t = x.shape[2]
    if t % 2 == 0:
        return _pair_mean(x)
    if t == 1:
        return x
    return torch.cat([x[:, :, :1], _pair_mean(x[:, :, 1:])], dim=2)


def _pair_mean(x: Tensor) -> Tensor:
    return x.unflatten(2, (x.shape[2] // 2, 2)).mean(dim=3)  # [B, C, T/2, H, W]


def double_time_and_space(x: Tensor) -> Tensor:
    """Nearest 2x in T, H, W; an odd T > 1 doubles its first frame in space only; T=1 stays 1."""
    t = x.shape[2]
    if t > 1 and t % 2 == 1:
        first = F.interpolate(x[:, :, 0], scale_factor=2.0)[:, :, None]  # [B, C, 1, 2H, 2W]
        return torch.cat([first, F.interpolate(x[:, :, 1:], scale_factor=2.0)], dim=2)
    if t > 1:
        return F.interpolate(x, scale_factor=2.0)  # [B, C, 2T, 2H, 2W]
    return F.interpolate(x[:, :, 0], scale_factor=2.0)[:, :, None]  # [B, C, 1, 2H, 2W]


def resize_zq(zq: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest resize of the latent chunk to a feature map's (T, H, W); an odd T > 1 resizes the
    first (causal) frame on its own."""
    t, h, w = size
    if t > 1 and t % 2 == 1:
        first = F.interpolate(zq[:, :, :1], size=(1, h, w))
        return torch.cat([first, F.interpolate(zq[:, :, 1:], size=(t - 1, h, w))], dim=2)
    return F.interpolate(zq, size=(t, h, w))


def upsampled_frames(frames: int, levels: int) -> int:
    """Frames out of ``levels`` time-doubling upsamplers for a chunk of ``frames`` latents."""
    for _ in range(levels):
        frames = 1 if frames == 1 else (2 * frames - 1 if frames % 2 else 2 * frames)
    return frames


def downsampled_frames(frames: int, levels: int) -> int:
    """Frames out of ``levels`` time-halving downsamplers for a chunk of ``frames`` frames."""
    for _ in range(levels):
        frames = 1 + (frames - 1) // 2 if frames % 2 else frames // 2
    return frames


def temporal_levels(config: VAEConfig) -> int:
    """How many down/up blocks compress time: log2 of the temporal compression (2 for 4x)."""
    return int(math.log2(config.temporal_compression))


class CausalConv3d(nn.Module):
    """Conv3d padded causally in time (k-1 frames in front) and by (k-1)/2 zeros in space."""

    def __init__(self, layers: Layers, cin: int, cout: int, kernel: int = 3) -> None:
        super().__init__()
        self.time_kernel = kernel
        pad = (kernel - 1) // 2
        self.conv = layers.conv3d(cin, cout, kernel, padding=(0, pad, pad))

    def forward(self, x: Tensor, tail: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x [B, C, T, H, W], tail [B, C, k-1, H, W] or None on a first chunk -> (y, new tail)."""
        k = self.time_kernel
        if k == 1:
            return conv3d_in_time_parts(self.conv, x), None
        front = x[:, :, :1].expand(-1, -1, k - 1, -1, -1) if tail is None else tail
        x = torch.cat([front, x], dim=2)  # [B, C, k-1+T, H, W]
        return conv3d_in_time_parts(self.conv, x), x[:, :, -(k - 1):].clone()


class SpatialNorm3D(nn.Module):
    """GroupNorm whose scale and shift come from the latent chunk ``zq`` (MoVQ spatial norm)."""

    def __init__(self, layers: Layers, channels: int, zq_channels: int, groups: int) -> None:
        super().__init__()
        self.norm_layer = layers.group_norm(groups, channels, eps=SPATIAL_NORM_EPS)
        self.conv_y = CausalConv3d(layers, zq_channels, channels, kernel=1)
        self.conv_b = CausalConv3d(layers, zq_channels, channels, kernel=1)

    def forward(self, f: Tensor, zq: Tensor) -> Tensor:
        zq = resize_zq(zq, f.shape[-3:])  # [B, C_z, T, H, W] like f
        scale, _ = self.conv_y(zq, None)
        shift, _ = self.conv_b(zq, None)
        return self.norm_layer(f) * scale + shift


class ResnetBlock3D(nn.Module):
    """norm-silu-conv twice plus a skip; spatial norms (decoder) when ``zq_channels`` is given."""

    def __init__(self, layers: Layers, cin: int, cout: int, groups: int, eps: float,
                 zq_channels: int | None = None) -> None:
        super().__init__()
        self.norm1 = self._norm(layers, cin, groups, eps, zq_channels)
        self.conv1 = CausalConv3d(layers, cin, cout)
        self.norm2 = self._norm(layers, cout, groups, eps, zq_channels)
        self.conv2 = CausalConv3d(layers, cout, cout)
        # diffusers' non-causal 1x1x1 shortcut (a SafeConv3d, so no `.conv` in its key)
        self.conv_shortcut = layers.conv3d(cin, cout, 1) if cin != cout else None

    @staticmethod
    def _norm(layers: Layers, channels: int, groups: int, eps: float, zq_channels: int | None) -> nn.Module:
        if zq_channels is None:
            return layers.group_norm(groups, channels, eps=eps)
        return SpatialNorm3D(layers, channels, zq_channels, groups)

    def _apply_norm(self, norm: nn.Module, x: Tensor, zq: Tensor | None) -> Tensor:
        return norm(x) if zq is None else norm(x, zq)

    def forward(self, x: Tensor, tails: Mapping[str, Tensor], zq: Tensor | None = None) -> tuple[Tensor, Tails]:
        h = F.silu(self._apply_norm(self.norm1, x, zq))
        h, tail1 = self.conv1(h, tails.get("conv1"))
        h = F.silu(self._apply_norm(self.norm2, h, zq))
        h, tail2 = self.conv2(h, tails.get("conv2"))
        skip = x if self.conv_shortcut is None else conv3d_in_time_parts(self.conv_shortcut, x)
        return h + skip, {"conv1": tail1, "conv2": tail2}


def run_resnets(resnets: nn.ModuleList, x: Tensor, tails: Mapping[str, Tensor],
                zq: Tensor | None) -> tuple[Tensor, Tails]:
    """Apply ``resnets`` in order; tails keyed ``resnets.{i}.conv1`` etc."""
    new: Tails = {}
    for i, resnet in enumerate(resnets):
        x, t = resnet(x, sub_tails(tails, f"resnets.{i}"), zq)
        new.update(scoped(f"resnets.{i}", t))
    return x, new


class Downsample3D(nn.Module):
    """Optional time halving, then a 3x3 stride-2 conv per frame after padding right/bottom by 1."""

    def __init__(self, layers: Layers, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.conv = layers.conv2d(channels, channels, stride=2, padding=0)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        if self.compress_time:
            x = halve_time(x)
        return conv_per_frame(self.conv, F.pad(x, (0, 1, 0, 1)))  # [B, C, T, H/2, W/2]


class Upsample3D(nn.Module):
    """Nearest 2x (time too with ``compress_time``), then a 3x3 conv per frame."""

    def __init__(self, layers: Layers, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.conv = layers.conv2d(channels, channels, stride=1, padding=1)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        if self.compress_time:
            x = double_time_and_space(x)
        else:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0))  # [B, C, T, 2H, 2W]
        return conv_per_frame(self.conv, x)


class DownBlock3D(nn.Module):
    def __init__(self, layers: Layers, cin: int, cout: int, num_layers: int, groups: int, eps: float,
                 add_downsample: bool, compress_time: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(layers, cin if i == 0 else cout, cout, groups, eps) for i in range(num_layers))
        self.downsamplers = (nn.ModuleList([Downsample3D(layers, cout, compress_time)])
                             if add_downsample else None)

    def forward(self, x: Tensor, tails: Mapping[str, Tensor]) -> tuple[Tensor, Tails]:
        x, new = run_resnets(self.resnets, x, tails, None)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x, new


class MidBlock3D(nn.Module):
    def __init__(self, layers: Layers, channels: int, groups: int, eps: float,
                 zq_channels: int | None = None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(layers, channels, channels, groups, eps, zq_channels) for _ in range(2))

    def forward(self, x: Tensor, tails: Mapping[str, Tensor], zq: Tensor | None = None) -> tuple[Tensor, Tails]:
        return run_resnets(self.resnets, x, tails, zq)


class UpBlock3D(nn.Module):
    def __init__(self, layers: Layers, cin: int, cout: int, num_layers: int, groups: int, eps: float,
                 zq_channels: int, add_upsample: bool, compress_time: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(layers, cin if i == 0 else cout, cout, groups, eps, zq_channels)
            for i in range(num_layers))
        self.upsamplers = (nn.ModuleList([Upsample3D(layers, cout, compress_time)])
                           if add_upsample else None)

    def forward(self, x: Tensor, tails: Mapping[str, Tensor], zq: Tensor) -> tuple[Tensor, Tails]:
        x, new = run_resnets(self.resnets, x, tails, zq)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x, new


class Encoder3D(nn.Module):
    """Pixels [B, 3, T, H, W] -> moments [B, 2*latent, T', H/8, W/8] for one chunk."""

    def __init__(self, layers: Layers, config: VAEConfig) -> None:
        super().__init__()
        ch, groups, eps = config.block_out_channels, config.norm_num_groups, config.norm_eps
        levels, last = temporal_levels(config), len(ch) - 1
        self.conv_in = CausalConv3d(layers, config.in_channels, ch[0])
        self.down_blocks = nn.ModuleList(
            DownBlock3D(layers, ch[max(i - 1, 0)], ch[i], config.layers_per_block, groups, eps,
                        add_downsample=i < last, compress_time=i < levels)
            for i in range(len(ch)))
        self.mid_block = MidBlock3D(layers, ch[-1], groups, eps)
        self.norm_out = layers.group_norm(groups, ch[-1], eps=SPATIAL_NORM_EPS)
        self.conv_out = CausalConv3d(layers, ch[-1], 2 * config.latent_channels)

    def forward(self, x: Tensor, tails: Mapping[str, Tensor]) -> tuple[Tensor, Tails]:
        x, new = _run_conv("conv_in", self.conv_in, x, tails)
        for i, block in enumerate(self.down_blocks):
            x, t = block(x, sub_tails(tails, f"down_blocks.{i}"))
            new.update(scoped(f"down_blocks.{i}", t))
        x, t = self.mid_block(x, sub_tails(tails, "mid_block"))
        new.update(scoped("mid_block", t))
        x, t = _run_conv("conv_out", self.conv_out, F.silu(self.norm_out(x)), tails)
        return x, {**new, **t}


class Decoder3D(nn.Module):
    """Latents [B, latent, T, h, w] -> pixels [B, 3, T', 8h, 8w] for one chunk; the chunk itself
    is the ``zq`` of every spatial norm."""

    def __init__(self, layers: Layers, config: VAEConfig) -> None:
        super().__init__()
        ch, groups, eps = config.block_out_channels[::-1], config.norm_num_groups, config.norm_eps
        levels, last, zq = temporal_levels(config), len(ch) - 1, config.latent_channels
        self.conv_in = CausalConv3d(layers, zq, ch[0])
        self.mid_block = MidBlock3D(layers, ch[0], groups, eps, zq_channels=zq)
        self.up_blocks = nn.ModuleList(
            UpBlock3D(layers, ch[max(i - 1, 0)], ch[i], config.layers_per_block + 1, groups, eps, zq,
                      add_upsample=i < last, compress_time=i < levels)
            for i in range(len(ch)))
        self.norm_out = SpatialNorm3D(layers, ch[-1], zq, groups)
        self.conv_out = CausalConv3d(layers, ch[-1], config.out_channels)

    def forward(self, z: Tensor, tails: Mapping[str, Tensor]) -> tuple[Tensor, Tails]:
        x, new = _run_conv("conv_in", self.conv_in, z, tails)
        x, t = self.mid_block(x, sub_tails(tails, "mid_block"), z)
        new.update(scoped("mid_block", t))
        for i, block in enumerate(self.up_blocks):
            x, t = block(x, sub_tails(tails, f"up_blocks.{i}"), z)
            new.update(scoped(f"up_blocks.{i}", t))
        x, t = _run_conv("conv_out", self.conv_out, F.silu(self.norm_out(x, z)), tails)
        return x, {**new, **t}


def _run_conv(name: str, conv: CausalConv3d, x: Tensor, tails: Mapping[str, Tensor]) -> tuple[Tensor, Tails]:
    y, tail = conv(x, tails.get(name))
    return y, {name: tail}


__all__ = ["Layers", "Tails", "CausalConv3d", "SpatialNorm3D", "ResnetBlock3D", "Downsample3D",
           "Upsample3D", "DownBlock3D", "MidBlock3D", "UpBlock3D", "Encoder3D", "Decoder3D",
           "upsampled_frames", "downsampled_frames", "temporal_levels", "conv3d_in_time_parts",
           "conv3d_bounded", "takes_column_buffer"]
