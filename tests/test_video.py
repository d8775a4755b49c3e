"""inference.video on real video files written with OpenCV: one JSON line per frame (index,
timestamp, boxes in pixels), an annotated video with every frame, and unreadable videos that
leave nothing behind. The detector is a stand-in with known boxes; detect.py runs the real
ones on a video in tests/test_export.py."""
import json
import os

import cv2
import numpy as np
import pytest

from inference import video


class _FixedDetector:
    """One box per frame: class 2, its ymin moving down 10 % of the frame per frame."""

    num_classes = 3

    def __init__(self):
        self.calls = []

    def detect(self, images):
        self.calls.append(len(images))
        n = len(images)
        boxes = np.zeros([n, 5, 4], np.float32)
        start = sum(self.calls[:-1])
        for i in range(n):
            top = 0.1 * ((start + i) % 5)
            boxes[i, 0] = [top, 0.25, top + 0.5, 0.75]
        scores = np.zeros([n, 5], np.float32)
        scores[:, 0] = 0.9
        classes = np.zeros([n, 5], np.int32)
        classes[:, 0] = 2
        return {"boxes": boxes, "scores": scores, "classes": classes,
                "num_detections": np.ones([n], np.int32)}


def _write_video(path, frames=7, size=(96, 64), fps=5.0, fourcc="mp4v"):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 30 * i % 255, np.uint8)
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.parametrize("ext,fourcc", [(".mp4", "mp4v"), (".avi", "MJPG"), (".mov", "mp4v")])
def test_every_frame_gets_a_json_line_and_an_annotated_frame(tmp_path, ext, fourcc):
    src = _write_video(str(tmp_path / f"clip{ext}"), fourcc=fourcc)
    detector = _FixedDetector()
    run = video.detect_video(detector, src, str(tmp_path / "out"), class_names={2: "dog"},
                             batch_size=3, progress=False)
    assert run.frames == 7 and run.announced_frames == 7 and run.fps == pytest.approx(5.0)
    assert detector.calls == [3, 3, 1]
    assert run.annotated == str(tmp_path / "out" / f"clip_detections{ext}")
    with open(run.jsonl) as f:
        lines = [json.loads(line) for line in f]
    assert [line["frame"] for line in lines] == list(range(7))
    assert [line["timestamp"] for line in lines] == pytest.approx([i / 5.0 for i in range(7)])
    # Pixels of the 96x64 frame.
    assert lines[3]["detections"] == [{"class_id": 2, "class_name": "dog", "score": 0.9,
                                       "bbox": {"ymin": 19.2, "xmin": 24.0, "ymax": 51.2,
                                                "xmax": 72.0}}]
    capture = cv2.VideoCapture(run.annotated)
    count, drawn = 0, 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count += 1
        drawn += int(frame.std() > 5)  # a plain grey frame unless the box was drawn
    assert count == 7 and drawn == 7
    assert sorted(os.listdir(tmp_path / "out")) == sorted([f"clip{ext}".replace(ext, ".jsonl"),
                                                          f"clip_detections{ext}"])


def test_no_drawing_writes_only_the_json_lines(tmp_path):
    src = _write_video(str(tmp_path / "clip.mp4"))
    run = video.detect_video(_FixedDetector(), src, str(tmp_path / "out"), draw=False,
                             progress=False)
    assert run.annotated is None and os.listdir(tmp_path / "out") == ["clip.jsonl"]


def test_unreadable_videos_leave_no_output(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 100)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="broken.mp4: not a readable video"):
        video.detect_video(_FixedDetector(), str(bad), str(out), progress=False)
    with pytest.raises(FileNotFoundError, match="missing.avi"):
        video.detect_video(_FixedDetector(), str(tmp_path / "missing.avi"), str(out),
                           progress=False)
    assert not out.exists()
    assert video.is_video("a/B.MOV") and not video.is_video("a/b.jpg")


def test_a_failure_mid_video_leaves_no_partial_file(tmp_path):
    src = _write_video(str(tmp_path / "clip.mp4"))

    class Failing(_FixedDetector):
        def detect(self, images):
            if self.calls:
                raise RuntimeError("detector died")
            return super().detect(images)

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="detector died"):
        video.detect_video(Failing(), src, str(out), batch_size=2, progress=False)
    assert not out.exists() or os.listdir(out) == []
