"""Reading and writing videos and images with imageio-ffmpeg (no PIL, no torchvision), and the
conversion between the two pixel layouts of the pack.

Frames are float tensors [F, H, W, C] in 0..1 (ComfyUI's IMAGE layout); the VAE reads and
writes videos [B, 3, F, H, W] in -1..1 (:func:`frames_to_video`, :func:`video_to_frames`).
Files are written to a temporary name beside the target and renamed when complete, so an
interrupted write never leaves a half file under the requested name.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE frames [F, H, W, C] 0..1 -> VAE video [1, 3, F, H, W] in -1..1 (``2x - 1``, as
    diffusers), float32; an alpha channel is dropped."""
    x = frames[..., :3].float()  # [F, H, W, 3]
    return (2.0 * x - 1.0).permute(3, 0, 1, 2)[None]  # [1, 3, F, H, W]


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """VAE video [B, 3, F, H, W] in -1..1 -> IMAGE frames [B*F, H, W, 3] float32 0..1
    (``x / 2 + 0.5`` clamped, as diffusers; computed in float32), video after video."""
    x = (video.float() / 2 + 0.5).clamp(0, 1)  # [B, 3, F, H, W]
    return x.permute(0, 2, 3, 4, 1).flatten(0, 1)  # [B*F, H, W, 3]


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - requirements.txt installs it
        raise RuntimeError("imageio-ffmpeg is required to read or write video files "
                           "(pip install imageio-ffmpeg)") from exc
    return imageio_ffmpeg


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[F, H, W, C] float 0..1 -> uint8 numpy, rounded."""
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [F, H, W, C] with C in 1, 3, 4; got {tuple(frames.shape)}")
    arr = (frames.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def write_mp4(frames: torch.Tensor, path: str | os.PathLike, fps: float = 8.0, crf: int = 17) -> Path:
    """Write [F, H, W, C] frames (0..1) as an H.264 mp4; odd sizes are padded by ffmpeg."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    arr = frames_to_uint8(frames)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=out.parent, prefix=f".{out.stem}.")
    os.close(fd)
    try:
        _write_frames(arr, tmp, fps, crf)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("wrote %s (%d frames, %dx%d, %g fps)", out, arr.shape[0], arr.shape[2], arr.shape[1], fps)
    return out


def _write_frames(arr: np.ndarray, path: str, fps: float, crf: int) -> None:
    h, w = arr.shape[1:3]
    writer = _ffmpeg().write_frames(
        path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
        output_params=["-crf", str(crf)], macro_block_size=2, ffmpeg_log_level="error")
    writer.send(None)
    for frame in arr:
        writer.send(frame)
    writer.close()


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """Read a video (or a still image) as [F, H, W, 3] float 0..1 and its frame rate."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"video/image file {str(p)!r} does not exist")
    reader = _ffmpeg().read_frames(str(p), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = []
    for raw in reader:
        frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
        if max_frames is not None and len(frames) >= max_frames:
            reader.close()
            break
    if not frames:
        raise ValueError(f"{str(p)!r} holds no decodable frames")
    video = torch.from_numpy(np.stack(frames)).float() / 255.0
    return video, float(meta.get("fps") or 8.0)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read one image as [1, H, W, 3] float 0..1."""
    video, _fps = read_video(path, max_frames=1)
    return video[:1]


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames in a video file (decodes it; fine for test-sized files)."""
    n, _secs = _ffmpeg().count_frames_and_secs(str(path))
    return int(n)


def write_frames(frames: torch.Tensor, out: Path, fps: float) -> Path:
    """[F, H, W, C] 0..1 to ``out``: H.264 mp4, or safetensors ``{"frames": float32}``."""
    if out.suffix.lower() == ".mp4":
        return write_mp4(frames, out, fps=fps)
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"frames": frames.float().contiguous().cpu()}, str(out))
    return out
