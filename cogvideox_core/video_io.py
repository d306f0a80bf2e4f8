"""Reading and writing videos and images with imageio-ffmpeg (no PIL, no torchvision), and the
conversion between the two pixel layouts of the pack.

Frames are float tensors [F, H, W, C] in 0..1 (ComfyUI's IMAGE layout); the VAE reads and
writes videos [B, 3, F, H, W] in -1..1 (:func:`frames_to_video`, :func:`video_to_frames`).
Files are written to a temporary name beside the target and renamed when complete, so an
interrupted write never leaves a half file under the requested name; a replaced file keeps its
mode, a new one gets the user's umask (:func:`_replace_atomically`). A file that cannot be read
raises one ``ValueError`` line naming it and what is wrong (:func:`probe_media` checks one before
any model loads); ffmpeg's banner never reaches the user.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

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


MP4_MAX_SIDE = 16384  # libx264 refuses wider or taller frames ("invalid width x height")


def check_mp4_size(height: int, width: int, name: str = "frames") -> None:
    """``ValueError`` unless H.264 can hold ``height`` x ``width`` frames."""
    if max(height, width) > MP4_MAX_SIDE:
        raise ValueError(f"{name} of {width}x{height}: an H.264 mp4 holds at most {MP4_MAX_SIDE} pixels "
                         "a side; write .safetensors instead")


def write_mp4(frames: torch.Tensor, path: str | os.PathLike, fps: float = 8.0, crf: int = 17) -> Path:
    """Write [F, H, W, C] frames (0..1) as an H.264 mp4; odd sizes are padded by ffmpeg."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    check_mp4_size(frames.shape[1], frames.shape[2])
    arr = frames_to_uint8(frames)
    out = _replace_atomically(Path(path), lambda tmp: _write_frames(arr, tmp, fps, crf))
    logger.info("wrote %s (%d frames, %dx%d, %g fps)", out, arr.shape[0], arr.shape[2], arr.shape[1], fps)
    return out


def _replace_atomically(out: Path, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` to a new file beside ``out`` (same suffix: ffmpeg picks its muxer by it),
    then rename it over ``out``. The result keeps the mode of the file it replaces, or gets the
    umask's (the temp file is created 0o666 & ~umask by the OS, not 0600 as ``mkstemp``); on any
    failure or interrupt the temp file goes and ``out`` is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(out)
    try:
        mode = out.stat().st_mode if out.is_file() else os.stat(tmp).st_mode
        write(str(tmp))
        os.chmod(tmp, mode & 0o7777)  # the writer may have recreated the file
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _create_beside(out: Path) -> Path:
    """A new empty hidden file ``.<stem>.<random><suffix>`` in ``out``'s folder."""
    while True:
        tmp = out.with_name(f".{out.stem}.{secrets.token_hex(4)}{out.suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits taken
            continue


def _write_frames(arr: np.ndarray, path: str, fps: float, crf: int) -> None:
    h, w = arr.shape[1:3]
    writer = _ffmpeg().write_frames(
        path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
        output_params=["-crf", str(crf)], macro_block_size=2, ffmpeg_log_level="error")
    writer.send(None)
    for frame in arr:
        writer.send(frame)
    writer.close()
    if os.path.getsize(path) == 0:  # imageio-ffmpeg does not report an encoder that never opened
        raise OSError(f"ffmpeg wrote nothing for {w}x{h} frames (see its message above)")


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe_media` finds in a video or image file (an image is 1 frame)."""

    frames: int
    height: int
    width: int
    fps: float


def read_video(path: str | os.PathLike, max_frames: int | None = None,
               label: str | None = None) -> tuple[torch.Tensor, float]:
    """Read a video (or a still image) as [F, H, W, 3] float 0..1 and its frame rate (8 when the
    file has none). ``label``: how the caller calls this input (``"--video"``, a node input),
    put before the file name in errors, which are one ``ValueError`` line (:func:`probe_media`)."""
    where = _where(path, label)
    frames = []
    with _reading(path, where) as (reader, meta):
        w, h = meta["size"]
        for raw in reader:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{where}: no frames (ffmpeg decoded none)")
    video = torch.from_numpy(np.stack(frames)).float() / 255.0
    return video, float(meta.get("fps") or 8.0)


def read_image(path: str | os.PathLike, label: str | None = None) -> torch.Tensor:
    """Read one image (or a video's first frame) as [1, H, W, 3] float 0..1."""
    video, _fps = read_video(path, max_frames=1, label=label)
    return video[:1]


def probe_media(path: str | os.PathLike, label: str | None = None) -> MediaInfo:
    """Judge a video or image file before any model loads: decodable, its size, its frame
    count and frame rate (as :func:`read_video` reports it). The count is ffmpeg's own
    (``count_frames_and_secs``: one decode, no pixel conversion); :func:`read_video` keeps a
    constant rate, so a damaged or variable-rate file can read a frame more or less. Raises the
    one-line ``ValueError`` of :func:`read_video` for a file that is missing, a folder, empty or
    not decodable."""
    where = _where(path, label)
    with _reading(path, where) as (_reader, meta):
        w, h = meta["size"]
    try:
        n = int(_ffmpeg().count_frames_and_secs(str(path))[0] or 0)
    except RuntimeError as exc:  # "FFMPEG call failed with N:\n<stderr>" / "Could not get number of frames"
        raise _unreadable(where, str(exc), "decoding failed") from None
    if n < 1:
        raise ValueError(f"{where}: no frames (ffmpeg decoded none)")
    return MediaInfo(frames=n, height=int(h), width=int(w), fps=float(meta.get("fps") or 8.0))


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames in a video file (decodes it; fine for test-sized files)."""
    return probe_media(path).frames


def _where(path: str | os.PathLike, label: str | None) -> str:
    return f"{label} {os.fspath(path)}" if label else os.fspath(path)


@contextlib.contextmanager
def _reading(path: str | os.PathLike, where: str) -> Iterator[tuple[Iterator[bytes], dict]]:
    """imageio-ffmpeg's frame reader past its metadata, with its failures as one ``ValueError``
    line. It raises ``OSError`` ("Could not load meta information" + ffmpeg's whole stderr,
    banner included) when ffmpeg cannot open or decode the input, and ``RuntimeError`` ("Could
    not read frame N" + stderr) when decoding breaks off; the reader is closed on the way out
    (that stops ffmpeg)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{where}: is a folder, not an image or video file")
    if not p.is_file():
        raise ValueError(f"{where}: does not exist")
    if p.stat().st_size == 0:
        raise ValueError(f"{where}: is an empty file, not decodable as an image or video")
    reader = _ffmpeg().read_frames(str(p), pix_fmt="rgb24")
    try:
        try:
            meta = next(reader)
        except (OSError, RuntimeError) as exc:
            raise _unreadable(where, str(exc)) from None
        try:
            yield reader, meta
        except RuntimeError as exc:
            raise _unreadable(where, str(exc), "decoding failed part way") from None
    finally:
        reader.close()


_FFMPEG_TAG = re.compile(r"^(\[[^\]]* @ 0x[0-9a-f]+\] *)+")  # "[in#0 @ 0x55...] " component tags
_FFMPEG_ERROR = re.compile(r"error|invalid|not found|no such|could not|cannot|does not|unsupported|failed",
                           re.IGNORECASE)


def _unreadable(where: str, text: str, what: str = "not decodable as an image or video") -> ValueError:
    """One ``ValueError`` line out of imageio-ffmpeg's exception text (ffmpeg's whole stderr:
    banner, build configuration, streams): "no frames" when the file has streams but no video
    one (a sound file), else ``what`` and ffmpeg's diagnosis: the first line a demuxer or
    decoder logged that reads as an error ("moov atom not found": a cut mp4; "Invalid PNG
    signature ..."; "Invalid data found when processing input")."""
    lines = [ln.strip() for ln in text.splitlines()]
    streams = [ln for ln in lines if ln.startswith("Stream #")]
    if streams and not any(" Video:" in ln for ln in streams):
        return ValueError(f"{where}: no frames (it holds no video or image stream)")
    tagged = [_FFMPEG_TAG.sub("", ln) for ln in lines if _FFMPEG_TAG.match(ln)]
    reason = next((ln for ln in tagged if _FFMPEG_ERROR.search(ln)), tagged[0] if tagged else "")
    reason = reason.rstrip(".") or "no reason given"
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return ValueError(f"{where}: {what} (ffmpeg: {reason})")


def write_frames(frames: torch.Tensor, out: Path, fps: float) -> Path:
    """[F, H, W, C] 0..1 to ``out``: H.264 mp4, or safetensors ``{"frames": float32}``; both
    written beside ``out`` and renamed over it when complete (:func:`_replace_atomically`)."""
    out = Path(out)
    if out.suffix.lower() == ".mp4":
        return write_mp4(frames, out, fps=fps)
    from safetensors.torch import save_file

    if frames.ndim != 4:
        raise ValueError(f"frames must be [F, H, W, C]; got {tuple(frames.shape)}")
    tensors = {"frames": frames.detach().float().contiguous().cpu()}
    return _replace_atomically(out, lambda tmp: save_file(tensors, tmp))
