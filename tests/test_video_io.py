"""Media files: a bad input is one short ``ValueError`` line naming the file (no ffmpeg banner),
:func:`probe_media` sizes a file up before any model loads, and writing is atomic with the mode
a user expects (a replaced file's, or the umask's)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from cogvideox_core import video_io
from cogvideox_core.video_io import MediaInfo, probe_media, read_image, read_video, write_frames, write_mp4

F, H, W = 9, 32, 48


def frames(seed: int = 0) -> torch.Tensor:
    return torch.rand(F, H, W, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(frames(), tmp_path_factory.mktemp("media") / "clip.mp4", fps=8)


def bad_file(kind: str, folder: Path, mp4: Path) -> Path:
    """A file of one bad kind, under a name that looks fine."""
    if kind == "text named .png":
        (folder / "photo.png").write_text("hello, I am not a png\n")
        return folder / "photo.png"
    if kind == "text named .mp4":
        (folder / "clip.mp4").write_text("just text\n" * 10)
        return folder / "clip.mp4"
    if kind == "truncated mp4":
        data = mp4.read_bytes()
        (folder / "cut.mp4").write_bytes(data[:len(data) // 2])
        return folder / "cut.mp4"
    if kind == "folder":
        (folder / "frames.mp4").mkdir()
        return folder / "frames.mp4"
    if kind == "empty file":
        (folder / "empty.png").touch()
        return folder / "empty.png"
    if kind == "missing":
        return folder / "nowhere.mp4"
    raise AssertionError(kind)


BAD = {"text named .png": "not decodable as an image or video (ffmpeg: ",
       "text named .mp4": "not decodable as an image or video (ffmpeg: ",
       "truncated mp4": "not decodable as an image or video (ffmpeg: moov atom not found)",
       "folder": "is a folder", "empty file": "is an empty file", "missing": "does not exist"}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("reader", ["read_video", "read_image", "probe_media"])
def test_bad_file_is_one_short_line(tmp_path: Path, mp4: Path, kind: str, reader: str) -> None:
    path = bad_file(kind, tmp_path, mp4)
    with pytest.raises(ValueError) as info:
        getattr(video_io, reader)(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and BAD[kind] in message
    assert "\n" not in message and len(message) < 300 and "ffmpeg version" not in message
    chained = info.value.__cause__ or (None if info.value.__suppress_context__ else info.value.__context__)
    assert chained is None  # no 4 KB exception chained under it either


def test_label_names_the_flag(tmp_path: Path, mp4: Path) -> None:
    path = bad_file("text named .png", tmp_path, mp4)
    with pytest.raises(ValueError, match=r"^--image .*photo\.png: not decodable"):
        read_image(path, label="--image")


def test_sound_file_has_no_frames(tmp_path: Path) -> None:
    import subprocess

    import imageio_ffmpeg

    wav = tmp_path / "sound.wav"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=0.2",
                    str(wav)], check=True)
    for reader in (read_video, probe_media):
        with pytest.raises(ValueError, match=r"sound\.wav: no frames \(it holds no video or image stream\)$"):
            reader(wav)


def test_probe_mp4_and_png(tmp_path: Path, mp4: Path) -> None:
    from PIL import Image

    assert probe_media(mp4) == MediaInfo(frames=F, height=H, width=W, fps=8.0)
    assert read_video(mp4)[0].shape == (F, H, W, 3)
    png = tmp_path / "still.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(png)
    info = probe_media(png)
    assert (info.frames, info.height, info.width) == (1, 20, 30)
    assert read_image(png).shape == (1, 20, 30, 3)


SUFFIXES = [".mp4", ".safetensors"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("mode", [0o644, 0o664])
def test_replace_keeps_the_mode(tmp_path: Path, suffix: str, mode: int) -> None:
    out = write_frames(frames(0), tmp_path / f"out{suffix}", 8.0)
    os.chmod(out, mode)
    before = out.read_bytes()
    write_frames(frames(1), out, 8.0)
    assert stat.S_IMODE(out.stat().st_mode) == mode and out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_new_file_gets_the_umask(tmp_path: Path, suffix: str, umask: int) -> None:
    old = os.umask(umask)
    try:
        out = write_frames(frames(), tmp_path / "sub" / f"new{suffix}", 8.0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("how", ["wrong shape", "writer raises", "interrupt"])
def test_failed_write_leaves_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str,
                                        how: str) -> None:
    out = write_frames(frames(0), tmp_path / f"out{suffix}", 8.0)
    before = out.read_bytes()
    bad, error = frames(1), {"wrong shape": ValueError, "writer raises": OSError, "interrupt": KeyboardInterrupt}[how]
    if how == "wrong shape":
        bad = torch.rand(H, W, 3)
    else:
        import safetensors.torch

        def half_written(*args, **kwargs):  # writes part of the temp file, then fails
            Path(next(a for a in args if isinstance(a, str) and a.endswith(suffix))).write_bytes(b"half")
            raise error()

        monkeypatch.setattr(video_io, "_write_frames", half_written)
        monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(error):
        write_frames(bad, out, 8.0)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_frames_wider_than_h264_takes_are_refused_and_nothing_replaced(tmp_path: Path) -> None:
    """libx264 opens no encoder past 16384 pixels a side and imageio-ffmpeg reported success
    with an empty file; now refused before ffmpeg starts, the old file kept."""
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    with pytest.raises(ValueError, match="at most 16384 pixels a side; write .safetensors"):
        write_mp4(torch.rand(2, 16, 16400, 3), out)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
