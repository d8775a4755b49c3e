"""Detection on video files (mp4, avi, mov through OpenCV): an annotated video and a JSON-lines
file with every frame's detections. The library side of ``detect.py`` for videos.

Each frame goes through the same detector as an image file (``ImageDetector`` or an exported
model of ``deploy.runtime``: anything with ``detect(images)`` and ``num_classes``), its
detections become JSON in pixels (``detector.detections_to_list``) and are drawn from that JSON
(``drawing.draw_detections``). Both outputs are written under temporary names and renamed into
place at the end (``fileio.atomic``): an interrupted or failed run leaves no partial file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from fileio import atomic
from inference import drawing
from inference.detector import detections_to_list

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov")
# Codecs OpenCV's bundled FFmpeg writes for each container.
_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}
DEFAULT_FPS = 25.0  # when the file does not say


def is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass
class VideoRun:
    """What :func:`detect_video` did: the outputs, the frames processed (and how many the file
    announced, 0 when unknown), the file's frame rate and the processing time."""

    video: str
    annotated: Optional[str]
    jsonl: str
    frames: int
    announced_frames: int
    fps: float
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def open_video(path: str) -> tuple[cv2.VideoCapture, float, int, int, int]:
    """``(capture, fps, frame count (0: unknown), width, height)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: OpenCV cannot decode it (names the file).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: video file not found.")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{path}: not a readable video (OpenCV cannot open it).")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(fps) or fps <= 0:
        fps = DEFAULT_FPS
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    return capture, fps, max(count, 0), width, height


def detect_video(detector: Any, path: str, output_dir: str, *,
                 class_names: Optional[Mapping[int, str]] = None, batch_size: int = 1,
                 draw: bool = True, progress: bool = True) -> VideoRun:
    """Run ``detector`` over every frame of a video.

    Writes ``<output_dir>/<stem>.jsonl`` (one line per frame: ``{"frame": index from 0,
    "timestamp": seconds (index / fps), "detections": [{"class_id", "class_name", "score",
    "bbox": {"ymin", "xmin", "ymax", "xmax"} in pixels}]}``) and, with ``draw``,
    ``<output_dir>/<stem>_detections<ext>`` (the same container and frame rate, the boxes
    drawn).

    Raises:
      FileNotFoundError, ValueError: the video cannot be opened or holds no decodable frame.
    """
    capture, fps, count, width, height = open_video(path)
    stem, ext = os.path.splitext(os.path.basename(path))
    jsonl_path = os.path.join(output_dir, stem + ".jsonl")
    video_path = os.path.join(output_dir, f"{stem}_detections{ext.lower()}") if draw else None
    try:
        ok, first = capture.read()
        if not ok or first is None:
            raise ValueError(f"{path}: not a readable video (no frame can be decoded).")
        height, width = first.shape[:2]
        start = time.perf_counter()
        frames = 0
        with contextlib.ExitStack() as stack:
            tmp_video = stack.enter_context(atomic.atomic_path(video_path)) if draw else None
            lines = stack.enter_context(atomic.atomic_open(jsonl_path, "w"))
            bar = stack.enter_context(tqdm(total=count or None, desc="detect", unit="frame",
                                           disable=not progress))
            writer = None
            if tmp_video is not None:
                writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter_fourcc(*_FOURCC[ext.lower()]),
                                         fps, (width, height))
                if not writer.isOpened():
                    raise OSError(f"{video_path}: OpenCV cannot write this video")
            batch: list[np.ndarray] = []  # RGB frames

            def flush() -> None:
                nonlocal frames
                det = detector.detect(batch)
                for i, rgb in enumerate(batch):
                    index = frames + i
                    found = detections_to_list(det["boxes"][i], det["scores"][i],
                                               det["classes"][i], int(det["num_detections"][i]),
                                               height, width, class_names)
                    lines.write(json.dumps({"frame": index, "timestamp": round(index / fps, 6),
                                            "detections": found}) + "\n")
                    if writer is not None:
                        drawn = drawing.draw_detections(rgb, found, class_names,
                                                        detector.num_classes)
                        writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                frames += len(batch)
                bar.update(len(batch))
                batch.clear()

            frame = first
            while frame is not None:
                if frame.shape[:2] != (height, width):
                    frame = cv2.resize(frame, (width, height))
                batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                if len(batch) == batch_size:
                    flush()
                ok, frame = capture.read()
                if not ok:
                    frame = None
            if batch:
                flush()
            if writer is not None:
                writer.release()
        seconds = time.perf_counter() - start
    finally:
        capture.release()
    return VideoRun(video=path, annotated=video_path, jsonl=jsonl_path, frames=frames,
                    announced_frames=count, fps=fps, seconds=seconds)
