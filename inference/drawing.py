"""Drawing detections and anchors: shared by ``detect.py`` (through
:func:`inference.image_files.detect_images`), the demo and the notebook.

Boxes are ``(ymin, xmin, ymax, xmax)``: normalized to the image (0..1) unless a function says
it takes pixels. Every class has one fixed colour (:func:`class_colors`), so the same class looks
the same in every picture. Two back-ends:

* PIL (:func:`draw_bboxes`, :func:`save_png`): fast, no figure, used for annotated PNG files;
* matplotlib (:func:`plt_bboxes`, :func:`plt_anchors`): for the notebook, like the original demo.
  matplotlib is imported by these two functions only, so that ``detect.py`` (PIL only) does not
  pay for importing pyplot (about a second).
"""
from __future__ import annotations

import colorsys
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fileio import atomic

ClassNames = Mapping[int, str] | Sequence[str] | None


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """One RGB colour per class id 0..num_classes-1, fixed and well separated.

    Hues advance by the golden ratio so that neighbouring ids never look alike; id 0
    (background) is grey.
    """
    colors = [(128, 128, 128)]
    for i in range(1, num_classes):
        hue = (0.0 + (i - 1) * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def class_name(class_id: int, class_names: ClassNames = None) -> str:
    """The display name of a class id: its name when known, else the number."""
    if class_names is None:
        return str(int(class_id))
    if isinstance(class_names, Mapping):
        return str(class_names.get(int(class_id), int(class_id)))
    # A sequence indexed by label id (index 0 = background), as in labels_to_names lists.
    if 0 <= int(class_id) < len(class_names):
        return str(class_names[int(class_id)])
    return str(int(class_id))


def box_label(class_id: int, score: float | None, class_names: ClassNames = None) -> str:
    """``"name 0.87"`` (or just the name when there is no score)."""
    name = class_name(class_id, class_names)
    return name if score is None else f"{name} {float(score):.2f}"


def _as_arrays(bboxes, classes, scores):
    bboxes = np.asarray(bboxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    if len(classes) != len(bboxes):
        raise ValueError(f"{len(bboxes)} boxes but {len(classes)} classes")
    if scores is not None:
        scores = np.asarray(scores, np.float32).reshape(-1)
        if len(scores) != len(bboxes):
            raise ValueError(f"{len(bboxes)} boxes but {len(scores)} scores")
    return bboxes, classes, scores


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_bboxes(image: np.ndarray, bboxes, classes, scores=None, class_names: ClassNames = None,
                num_classes: int | None = None, thickness: int | None = None,
                normalized: bool = True) -> np.ndarray:
    """Draw labelled boxes on a copy of an image.

    Args:
      image: uint8 [H, W, 3] RGB.
      bboxes: [n, 4] ``(ymin, xmin, ymax, xmax)``, normalized (or pixels with ``normalized=False``).
      classes: [n] class ids (1..num_classes-1).
      scores: [n] scores shown after the name, or None.
      class_names: {id: name} or a list indexed by id; None shows the ids.
      num_classes: size of the colour table (default: enough for the largest id).
      thickness: line width in pixels (default: from the image size).

    Returns:
      The annotated uint8 [H, W, 3] RGB image.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
    bboxes, classes, scores = _as_arrays(bboxes, classes, scores)
    height, width = image.shape[:2]
    colors = class_colors(max(num_classes or 0, int(classes.max(initial=0)) + 1))
    thickness = thickness or max(1, round(min(height, width) / 150))
    font = _font(max(10, round(min(height, width) / 28)))
    canvas = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    scale = np.array([height, width, height, width], np.float32) if normalized else np.ones(4, np.float32)
    for i in np.argsort(scores if scores is not None else np.zeros(len(bboxes)), kind="stable"):
        # Lowest score first, so the most confident box and label end up on top.
        ymin, xmin, ymax, xmax = (bboxes[i] * scale).tolist()
        color = colors[int(classes[i])]
        draw.rectangle((xmin, ymin, xmax, ymax), outline=color, width=thickness)
        text = box_label(int(classes[i]), None if scores is None else float(scores[i]), class_names)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        # The label sits above the box, or inside it when the box touches the top edge.
        ty = ymin - text_h - 4 if ymin - text_h - 4 >= 0 else ymin
        tx = min(max(xmin, 0), max(width - text_w - 4, 0))
        draw.rectangle((tx, ty, tx + text_w + 4, ty + text_h + 4), fill=color)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def draw_detections(image: np.ndarray, detections: Sequence[Mapping], class_names: ClassNames = None,
                    num_classes: int | None = None) -> np.ndarray:
    """Draw detections as written to the JSON files (``inference.detector.detections_to_list``:
    ``{'class_id', 'score', 'bbox': {'ymin', 'xmin', 'ymax', 'xmax'} in pixels}``), so the
    picture shows exactly what the file says."""
    boxes = np.array([[d["bbox"][k] for k in ("ymin", "xmin", "ymax", "xmax")]
                      for d in detections], np.float32).reshape(-1, 4)
    return draw_bboxes(image, boxes, [d["class_id"] for d in detections],
                       [d["score"] for d in detections], class_names=class_names,
                       num_classes=num_classes, normalized=False)


def save_png(image: np.ndarray, path: str) -> str:
    """Write a uint8 RGB image as PNG atomically (creating the folder); returns ``path``."""
    with atomic.atomic_open(path, "wb") as f:
        Image.fromarray(np.asarray(image, np.uint8)).save(f, format="PNG")
    return path


def plt_bboxes(image: np.ndarray, classes, scores, bboxes, class_names: ClassNames = None,
               num_classes: int | None = None, figsize=(10, 10), linewidth: float = 1.5, ax=None):
    """matplotlib version of :func:`draw_bboxes` (the original notebook's ``plt_bboxes``).

    Args are those of :func:`draw_bboxes` (the original's argument order: classes, scores,
    bboxes), boxes ``(ymin, xmin, ymax, xmax)`` normalized. Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    bboxes, classes, scores = _as_arrays(bboxes, classes, scores)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    ax.imshow(image)
    ax.set_axis_off()
    height, width = np.asarray(image).shape[:2]
    colors = class_colors(max(num_classes or 0, int(classes.max(initial=0)) + 1))
    for i in range(len(bboxes)):
        ymin, xmin, ymax, xmax = bboxes[i] * np.array([height, width, height, width])
        color = np.array(colors[int(classes[i])]) / 255.0
        ax.add_patch(plt.Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False,
                                   edgecolor=color, linewidth=linewidth))
        text = box_label(int(classes[i]), None if scores is None else float(scores[i]), class_names)
        ax.text(xmin, ymin - 2, text, bbox=dict(facecolor=color, alpha=0.6, pad=1, edgecolor="none"),
                fontsize=9, color="black")
    return ax


def plt_anchors(image: np.ndarray, anchors: np.ndarray, centers: int | Sequence[int] = (0,),
                ax=None, figsize=(8, 8), show_grid: bool = True):
    """Draw the anchors of one feature layer on an image (matplotlib).

    Args:
      image: the image (any size; anchors are normalized so they are drawn relative to it).
      anchors: [h, w, A, 4] ``(ymin, xmin, ymax, xmax)`` normalized, unclipped: one layer's
        slice of ``net.anchors()`` (ordered row, column, anchor) reshaped to its grid.
      centers: flat indices (row * w + column) of the grid cells whose A anchors are drawn;
        all grid centres are drawn as dots when ``show_grid``.
    Returns:
      The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    anchors = np.asarray(anchors, np.float32)
    if anchors.ndim != 4 or anchors.shape[-1] != 4:
        raise ValueError(f"plt_anchors needs one layer's anchors shaped [h, w, A, 4], got {anchors.shape}")
    num_per_cell = anchors.shape[2]
    cells = anchors.reshape(-1, num_per_cell, 4)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    height, width = np.asarray(image).shape[:2]
    ax.imshow(image)
    scale = np.array([height, width, height, width], np.float32)
    if show_grid:
        cy = (cells[:, 0, 0] + cells[:, 0, 2]) / 2 * height
        cx = (cells[:, 0, 1] + cells[:, 0, 3]) / 2 * width
        ax.plot(cx, cy, ".", color="white", markersize=3)
    colors = class_colors(num_per_cell + 1)[1:]
    for cell in np.atleast_1d(centers):
        for a in range(num_per_cell):
            ymin, xmin, ymax, xmax = cells[int(cell), a] * scale
            ax.add_patch(plt.Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False,
                                       edgecolor=np.array(colors[a]) / 255.0, linewidth=1.5))
    # Anchors are not clipped: show a margin so the ones that cross the border are visible.
    ax.set_xlim(-0.25 * width, 1.25 * width)
    ax.set_ylim(1.25 * height, -0.25 * height)
    return ax
