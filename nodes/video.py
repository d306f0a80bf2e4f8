"""The save video node: IMAGE frames to an H.264 mp4 in ComfyUI's output folder."""
from __future__ import annotations

from typing import Any

import torch

from ..cogvideox_core.families import DEFAULT_FPS
from ..cogvideox_core.video_io import read_video, write_mp4
from . import host
from .common import MAX_FRAMES, MODEL, ModelHandle, check_finite, float_input, images_tensor, int_input, tip

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


class CogVideoXLoadVideo:
    DESCRIPTION = ("Loads a video from ComfyUI's input folder as IMAGE frames (imageio-ffmpeg), for "
                   "video-to-video, inpainting and control.")
    CATEGORY = "CogVideoX/video"
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT")
    RETURN_NAMES = ("images", "frame_count", "frame_rate")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "video": tip(host.input_files(VIDEO_EXTENSIONS), "A video file in ComfyUI's input folder."),
            "frame_limit": int_input("Read at most this many frames from the start (0 = all).", 49, 0,
                                     MAX_FRAMES),
        }}

    def load(self, video: str, frame_limit: int = 49) -> tuple[torch.Tensor, int, float]:
        path = host.input_path(video, "video", VIDEO_EXTENSIONS)
        if frame_limit < 0:
            raise ValueError(f"frame_limit={frame_limit} must be 0 (all frames) or positive")
        frames, fps = read_video(path, max_frames=frame_limit or None)
        return host.to_intermediate(frames), int(frames.shape[0]), fps

    @classmethod
    def IS_CHANGED(cls, video: str, frame_limit: int = 49) -> float:
        path = host.input_directory() / video
        return path.stat().st_mtime if path.is_file() else float("nan")


class CogVideoXSaveVideo:
    DESCRIPTION = ("Saves frames as an mp4 (H.264 via imageio-ffmpeg) in the output folder and shows it "
                   "in the UI; the frame rate comes from the model's family unless set.")
    CATEGORY = "CogVideoX/video"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "images": tip("IMAGE", "The video frames (from CogVideoX Tiled Decode). From Tiled Decode "
                          "(video list): one file per video, numbered."),
            "filename_prefix": tip("STRING", "File name prefix; may include a subfolder (video/cogvideox).",
                                   default="CogVideoX"),
            "frame_rate": float_input("Frames per second; 0 = the model's (8, or 16 for the 1.5 family; "
                                      "8 without a model).", 0.0, 0.0, 240.0, 0.5),
        }, "optional": {
            "model": tip(MODEL, "The model that made the video: gives the frame rate."),
        }}

    def save(self, images: torch.Tensor, filename_prefix: str = "CogVideoX", frame_rate: float = 0.0,
             model: ModelHandle | None = None) -> dict:
        frames = images_tensor("images", images)
        check_finite(self, frame_rate=frame_rate)
        if frame_rate < 0:
            raise ValueError(f"frame_rate={frame_rate} must be 0 (from the model) or positive")
        fps = frame_rate or float(model.family.fps if model is not None else DEFAULT_FPS)
        f, h, w, _c = frames.shape
        path, filename, subfolder = host.save_path(filename_prefix, w, h, ".mp4")
        write_mp4(frames, path, fps=fps)
        item = {"filename": filename, "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [item], "animated": (True,)}, "result": ()}


NODES: dict[str, Any] = {
    "CogVideoXLoadVideo": (CogVideoXLoadVideo, "CogVideoX Load Video"),
    "CogVideoXSaveVideo": (CogVideoXSaveVideo, "CogVideoX Save Video (mp4)"),
}
