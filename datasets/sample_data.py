"""A small, deterministic, VOC-format sample dataset of coloured shapes.

The demo, the notebook and the tests need a real detection task that a light SSD can learn
in a few CPU minutes, without downloading PASCAL VOC. This module draws one:

* real JPEG images (``JPEGImages/<id>.jpg``) on textured, muted backgrounds (gratings, a colour
  gradient, thin clutter lines and pixel noise), so the net cannot find objects by "anything
  that is not flat";
* four classes of distinct shapes (:data:`CLASSES`), each instance with its own saturated
  colour, size (about 10% to 60% of the shorter image side), aspect ratio and rotation;
  colour never tells the class, the shape does;
* limited overlap between objects (later objects occlude earlier ones a little), some objects
  cut by the image border (``truncated=1``) and a few tiny ones marked ``difficult=1``;
* VOC XML annotations (``Annotations/<id>.xml``, 1-based inclusive pixel boxes, ``truncated``
  and ``difficult`` flags), ``ImageSets/Main/{trainval,test}.txt`` and a label map
  ``labels.txt`` (one class name per line, line ``i`` = label ``i``, background excluded);
* optionally (``coco=True``, ``--coco``) COCO detection JSON for the same images,
  ``annotations/instances_{trainval,test}.json``, whose difficult objects are crowd regions,
  plus a few images with a crowd (a cluster of small shapes of one class, annotated as one
  ``iscrowd`` region) and a few without objects, listed in the JSON only (:func:`coco_json`).

Determinism: image ``i`` of a split is drawn from its own generator seeded with
``(seed, split, i)`` and written with fixed JPEG settings, so the same arguments give
byte-identical files, and a larger ``num_trainval`` only adds images after the existing ones.

Run as a module: ``python -m datasets.sample_data --output_dir sample_data [--coco]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import sys
from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from fileio import atomic

logger = logging.getLogger(__name__)

# Label 0 is the background; CLASSES[i - 1] is label i.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
LABELS_FILENAME = "labels.txt"
SPLITS: tuple[str, ...] = ("trainval", "test")
DEFAULT_IMAGE_SIZE: tuple[int, int] = (240, 320)  # (height, width): not square, so warping matters.
JPEG_QUALITY = 92

# Object sizes, as a fraction of the shorter image side (the side of the shape's own square
# before its aspect ratio is applied).
_MIN_SIZE, _MAX_SIZE = 0.10, 0.60
# Tiny "difficult" objects, like VOC's hard-to-see ones: scored neither way by VOC AP.
_DIFFICULT_SIZE = (0.045, 0.075)
_P_DIFFICULT = 0.12
# Fraction of objects placed across the image border (truncated=1).
_P_TRUNCATED = 0.15
# A truncated object keeps at least this fraction of its box inside the image.
_MIN_VISIBLE = 0.55
# Overlap allowed between two objects' boxes: IoU, and the part of a box another box may cover.
_MAX_IOU, _MAX_COVER = 0.30, 0.45
_MAX_OBJECTS = 4


@dataclasses.dataclass(frozen=True)
class SampleObject:
    """One annotated object: class name, box in pixels and VOC flags.

    ``box`` is ``(ymin, xmin, ymax, xmax)`` in continuous pixel coordinates (0..height, 0..width),
    already clipped to the image.
    """
    name: str
    box: tuple[float, float, float, float]
    truncated: int
    difficult: int


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted, textured background, float32 [H, W, 3] in 0..255."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(_hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.35, 0.8)),
                    np.float32)
    other = np.array(_hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.35, 0.8)),
                     np.float32)
    # A linear gradient between two muted colours.
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = base + (other - base) * ramp[..., None]
    # A few sinusoidal gratings (wood/fabric-like texture), each with its own tint.
    for _ in range(rng.integers(2, 5)):
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6.0, 60.0)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period + phase)
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        image += rng.uniform(6.0, 22.0) * wave[..., None] * tint
    return image


def _shape_polygon(name: str, rng: np.random.Generator, cy: float, cx: float,
                   side: float) -> list[tuple[float, float]] | None:
    """Vertices ``(x, y)`` of a shape centred at (cy, cx), or None for the circle class."""
    if name == "circle":
        return None
    aspect = math.exp(rng.uniform(-0.35, 0.35))  # w / h
    half_w, half_h = side * math.sqrt(aspect) / 2, side / math.sqrt(aspect) / 2
    if name == "square":
        angle = rng.uniform(-0.35, 0.35)  # mostly upright, slightly turned
        unit = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif name == "triangle":
        angle = rng.uniform(-math.pi, math.pi)
        unit = [(math.cos(a), math.sin(a)) for a in
                (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)]
    elif name == "star":
        angle = rng.uniform(-math.pi, math.pi)
        inner = rng.uniform(0.38, 0.5)
        unit = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            radius = 1.0 if k % 2 == 0 else inner
            unit.append((radius * math.cos(a), radius * math.sin(a)))
    else:
        raise ValueError(f"unknown sample class {name!r}; valid: {', '.join(CLASSES)}")
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    points = []
    for ux, uy in unit:
        x, y = ux * half_w, uy * half_h
        points.append((cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a))
    return points


def _extent(name: str, rng: np.random.Generator, cy: float, cx: float, side: float):
    """The drawable of a shape and its unclipped box ``(ymin, xmin, ymax, xmax)`` in pixels."""
    polygon = _shape_polygon(name, rng, cy, cx, side)
    if polygon is None:
        aspect = math.exp(rng.uniform(-0.2, 0.2))  # near-round ellipses
        ry, rx = side / 2 / math.sqrt(aspect), side / 2 * math.sqrt(aspect)
        return ("ellipse", (cx - rx, cy - ry, cx + rx, cy + ry)), (cy - ry, cx - rx, cy + ry, cx + rx)
    xs = [p[0] for p in polygon]
    ys = [p[1] for p in polygon]
    return ("polygon", polygon), (min(ys), min(xs), max(ys), max(xs))


def _box_area(box: Sequence[float]) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def _overlap_ok(box: Sequence[float], others: Sequence[Sequence[float]]) -> bool:
    for other in others:
        inter = _box_area((max(box[0], other[0]), max(box[1], other[1]),
                           min(box[2], other[2]), min(box[3], other[3])))
        union = _box_area(box) + _box_area(other) - inter
        if union > 0 and inter / union > _MAX_IOU:
            return False
        if inter > _MAX_COVER * min(_box_area(box), _box_area(other)):
            return False
    return True


def _paint(draw: ImageDraw.ImageDraw, rng: np.random.Generator, drawable, side: float) -> None:
    """Paint one shape (its own saturated colour and darker outline)."""
    hue = rng.uniform()
    fill = _hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
    outline = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.15, 0.4))
    kind, geometry = drawable
    outline_width = max(1, int(round(side / 40)))
    if kind == "ellipse":
        draw.ellipse(geometry, fill=fill, outline=outline, width=outline_width)
    else:
        draw.polygon(geometry, fill=fill, outline=outline, width=outline_width)


def _draw_crowd(draw: ImageDraw.ImageDraw, rng: np.random.Generator, height: int,
                width: int) -> SampleObject:
    """A crowd: 6-10 small, overlapping shapes of one class in a region of 40-65% of the shorter
    side; returns the region (the union of their boxes) as one object, ``difficult=1``."""
    short = float(min(height, width))
    name = CLASSES[int(rng.integers(len(CLASSES)))]
    region_h = short * rng.uniform(0.4, 0.65)
    region_w = min(region_h * rng.uniform(0.8, 1.4), width * 0.95)
    top, left = rng.uniform(0, height - region_h), rng.uniform(0, width - region_w)
    extents = []
    for _ in range(int(rng.integers(6, 11))):
        side = min(region_h, region_w) * rng.uniform(0.22, 0.35)
        cy = rng.uniform(top + side / 2, top + region_h - side / 2)
        cx = rng.uniform(left + side / 2, left + region_w - side / 2)
        drawable, full = _extent(name, rng, cy, cx, side)
        _paint(draw, rng, drawable, side)
        extents.append(full)
    box = (max(min(e[0] for e in extents), 0.0), max(min(e[1] for e in extents), 0.0),
           min(max(e[2] for e in extents), float(height)), min(max(e[3] for e in extents), float(width)))
    return SampleObject(name=name, box=box, truncated=0, difficult=1)


def draw_sample(rng: np.random.Generator, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                with_objects: bool = True, crowd: bool = False
                ) -> tuple[np.ndarray, list[SampleObject]]:
    """Draw one image and its objects.

    Args:
      rng: the generator to draw from (all randomness comes from it).
      image_size: ``(height, width)`` in pixels.
      with_objects: False draws the background, clutter and noise only (no shape, no object).
      crowd: also draw a crowd (:func:`_draw_crowd`, before the other objects, which keep
        clear of it): its region is one object with ``difficult=1``.

    Returns:
      ``(image uint8 [H, W, 3] RGB, objects)``; boxes are ``(ymin, xmin, ymax, xmax)`` pixels.
    """
    height, width = image_size
    short = float(min(height, width))
    canvas = Image.fromarray(np.clip(_background(rng, height, width), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    # Clutter: thin muted lines, which are background, not objects.
    for _ in range(rng.integers(0, 4)):
        colour = _hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.2, 0.9))
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(2)]
        draw.line(points, fill=colour, width=int(rng.integers(1, 3)))

    objects: list[SampleObject] = []
    boxes: list[tuple[float, float, float, float]] = []
    if crowd:
        objects.append(_draw_crowd(draw, rng, height, width))
        boxes.append(objects[-1].box)
    num_objects = int(rng.integers(1, _MAX_OBJECTS + 1)) if with_objects else 0
    want_difficult = with_objects and rng.uniform() < _P_DIFFICULT
    for k in range(num_objects + int(want_difficult)):
        difficult = int(want_difficult and k == num_objects)
        name = CLASSES[int(rng.integers(len(CLASSES)))]
        truncated_wanted = not difficult and rng.uniform() < _P_TRUNCATED
        for _attempt in range(30):
            if difficult:
                side = short * rng.uniform(*_DIFFICULT_SIZE)
            else:
                # Log-uniform sizes: as many small objects as large ones.
                side = short * math.exp(rng.uniform(math.log(_MIN_SIZE), math.log(_MAX_SIZE)))
            if truncated_wanted:
                cy, cx = rng.uniform(-0.1 * side, height + 0.1 * side), rng.uniform(-0.1 * side, width + 0.1 * side)
            else:
                cy, cx = rng.uniform(0.55 * side, height - 0.55 * side), rng.uniform(0.55 * side, width - 0.55 * side)
            drawable, full = _extent(name, rng, cy, cx, side)
            box = (max(full[0], 0.0), max(full[1], 0.0), min(full[2], float(height)), min(full[3], float(width)))
            visible = _box_area(box) / max(_box_area(full), 1e-6)
            cut = visible < 0.999
            if cut and (not truncated_wanted or visible < _MIN_VISIBLE):
                continue
            if truncated_wanted and not cut:
                continue
            if box[2] - box[0] < 4 or box[3] - box[1] < 4 or not _overlap_ok(box, boxes):
                continue
            break
        else:
            continue  # no room for this object; images keep at least the objects placed so far
        _paint(draw, rng, drawable, side)
        boxes.append(box)
        objects.append(SampleObject(name=name, box=tuple(float(v) for v in box),
                                    truncated=int(cut), difficult=difficult))

    # Sensor-like noise over everything, so shapes are not perfectly flat either.
    pixels = np.asarray(canvas, np.float32) + rng.normal(0.0, 5.0, size=(height, width, 3))
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8), objects


def annotation_xml(image_id: str, image_size: tuple[int, int], objects: Sequence[SampleObject]) -> str:
    """The VOC XML of one image: 1-based inclusive integer pixel boxes, as in PASCAL VOC."""
    height, width = image_size
    lines = ["<annotation>", "\t<folder>sample</folder>", f"\t<filename>{escape(image_id)}.jpg</filename>",
             "\t<source><database>SSD-TF2 sample shapes</database></source>",
             f"\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
             "\t<segmented>0</segmented>"]
    for obj in objects:
        ymin, xmin, ymax, xmax = obj.box
        # Continuous [x0, x1) pixel spans -> VOC's 1-based inclusive pixel indices.
        x1, y1 = int(math.floor(xmin)) + 1, int(math.floor(ymin)) + 1
        x2, y2 = max(int(math.ceil(xmax)), x1), max(int(math.ceil(ymax)), y1)
        lines += ["\t<object>", f"\t\t<name>{obj.name}</name>", "\t\t<pose>Unspecified</pose>",
                  f"\t\t<truncated>{obj.truncated}</truncated>", f"\t\t<difficult>{obj.difficult}</difficult>",
                  f"\t\t<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
                  "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of a uint8 RGB image with fixed settings (deterministic output)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False,
                                progressive=False, subsampling=0)
    return buffer.getvalue()


def image_ids(split: str, num_images: int) -> list[str]:
    """Ids of a split, e.g. ``trainval_000001``: unique across splits, stable as sizes grow."""
    return [f"{split}_{i + 1:06d}" for i in range(num_images)]


def _write_if_changed(path: str, data: bytes) -> None:
    # Rewriting identical bytes is skipped so that re-running keeps file times (caches stay warm).
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    atomic.write_bytes(path, data)


def _write_image(task: tuple) -> tuple[int, int, int, tuple[SampleObject, ...]]:
    """Draw and write one image; returns (objects, difficult, truncated, the objects).

    ``task[6]`` (default 'voc'): 'voc' images get their VOC XML; 'empty' (no object) and
    'crowd' (a crowd + objects) images are for the COCO JSON only and get no XML.
    """
    root, seed, split_index, image_id, index, image_size = task[:6]
    kind = task[6] if len(task) > 6 else "voc"
    image, objects = draw_sample(np.random.default_rng([seed, split_index, index]), image_size,
                                 with_objects=kind != "empty", crowd=kind == "crowd")
    _write_if_changed(os.path.join(root, "JPEGImages", image_id + ".jpg"), encode_jpeg(image))
    if kind == "voc":
        _write_if_changed(os.path.join(root, "Annotations", image_id + ".xml"),
                          annotation_xml(image_id, image_size, objects).encode())
    return (len(objects), sum(o.difficult for o in objects), sum(o.truncated for o in objects),
            tuple(objects))


# ----------------------------------------------------------------------------- COCO JSON

# COCO-style category ids of the classes: ascending in CLASSES order (so the converter's
# labels 1..4 equal the VOC labels) but with gaps, as COCO's own ids have.
COCO_CATEGORY_IDS: dict[str, int] = {"circle": 2, "square": 5, "triangle": 6, "star": 9}
COCO_DIR = "annotations"
# COCO ids: per split blocks of image and annotation ids; the COCO-only images after the others.
_COCO_IMAGE_BLOCK, _COCO_ANN_BLOCK = 1_000_000, 10_000_000
_COCO_OFFSETS = {"voc": 0, "crowd": 800_000, "empty": 900_000}
# Generator index of the COCO-only images (never the index of a VOC image).
_GENERATOR_OFFSETS = {"voc": 0, "crowd": 20_000_000, "empty": 10_000_000}
# Approximate segmentation area / box area per class (what COCO's 'area' measures); a crowd
# region is about half covered by its shapes.
_FILL = {"circle": math.pi / 4, "square": 0.9, "triangle": 0.5, "star": 0.45}
_CROWD_FILL = 0.5


def coco_annotations_path(root: str, split: str) -> str:
    """``<root>/annotations/instances_<split>.json``."""
    return os.path.join(root, COCO_DIR, f"instances_{split}.json")


def coco_only_image_ids(split: str, kind: str, num_images: int) -> list[str]:
    """Ids of a split's COCO-only images, e.g. ``trainval_empty_000001``, ``test_crowd_000002``."""
    return [f"{split}_{kind}_{i + 1:06d}" for i in range(num_images)]


def coco_json(image_size: tuple[int, int],
              images: Sequence[tuple[int, str, Sequence[SampleObject]]],
              first_annotation_id: int = 1) -> bytes:
    """The COCO detection JSON of one split: ``images`` are (COCO image id, image id string =
    file name without '.jpg', objects).

    Boxes are COCO's ``[x, y, width, height]`` (0-based continuous pixels, 2 decimals). The
    sample's difficult objects become crowd regions (``iscrowd`` 1): the tiny hard ones of the
    VOC images (ignored by COCO's metric as VOC's ignores difficult boxes) and the crowds of
    the crowd images. ``area`` approximates the shapes' own area (box area x the class's fill
    factor; a crowd region x 0.5); ``segmentation`` is the box as a polygon. Categories are
    listed out of id order on purpose (the converter sorts them).
    """
    height, width = image_size
    entries, annotations = [], []
    next_ann = first_annotation_id
    for coco_id, image_id, objects in images:
        entries.append({"id": coco_id, "file_name": image_id + ".jpg", "width": width,
                        "height": height})
        for obj in objects:
            ymin, xmin, ymax, xmax = obj.box
            x, y = round(xmin, 2), round(ymin, 2)
            w, h = round(xmax - xmin, 2), round(ymax - ymin, 2)
            fill = _FILL[obj.name] if not obj.difficult or w * h < 0.04 * width * height \
                else _CROWD_FILL
            annotations.append({
                "id": next_ann, "image_id": coco_id,
                "category_id": COCO_CATEGORY_IDS[obj.name],
                "bbox": [x, y, w, h], "area": round(w * h * fill, 2),
                "iscrowd": int(obj.difficult),
                "segmentation": [[x, y, round(x + w, 2), y, round(x + w, 2), round(y + h, 2),
                                  x, round(y + h, 2)]]})
            next_ann += 1
    categories = [{"id": COCO_CATEGORY_IDS[n], "name": n, "supercategory": "shape"}
                  for n in ("star", "circle", "triangle", "square")]
    data = {"info": {"description": "SSD-TF2 sample shapes", "version": "1.0"}, "licenses": [],
            "images": entries, "annotations": annotations, "categories": categories}
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def generate(root: str, num_trainval: int = 400, num_test: int = 100, seed: int = 0,
             image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
             num_workers: int | None = None, coco: bool = False) -> dict[str, int]:
    """Write the sample dataset under ``root`` in the PASCAL VOC layout (and COCO's).

    Args:
      root: output folder; ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/`` and
        ``labels.txt`` are created in it.
      num_trainval, num_test: images per split.
      seed: the dataset seed; the same arguments always give byte-identical files.
      image_size: ``(height, width)`` of every image, in pixels.
      num_workers: processes drawing images in parallel (default: the usable cores; 1 = none).
        The files do not depend on it (each image has its own generator).
      coco: also write COCO detection JSON for the same images,
        ``annotations/instances_<split>.json`` (:func:`coco_json`; images in ``JPEGImages/``),
        plus, per split of n images, ``max(1, n // 10)`` images with a crowd
        (``JPEGImages/<split>_crowd_NNNNNN.jpg``) and as many without objects
        (``<split>_empty_NNNNNN.jpg``), in the JSON only. The VOC files are the same with or
        without it.

    Returns:
      ``{'trainval': n, 'test': n, 'objects': total objects, 'difficult': n, 'truncated': n}``
      (of the VOC images), with ``coco``: also ``'coco_images'``, ``'coco_objects'``,
      ``'crowd'`` (crowd annotations) and ``'empty'`` (images without objects), over both
      splits' JSON.
    """
    if num_trainval < 0 or num_test < 0:
        raise ValueError(f"image counts must be >= 0, got trainval={num_trainval}, test={num_test}")
    height, width = int(image_size[0]), int(image_size[1])
    if min(height, width) < 32:
        raise ValueError(f"image_size {image_size} is too small: both sides must be >= 32 pixels")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    _write_if_changed(os.path.join(root, LABELS_FILENAME), ("\n".join(CLASSES) + "\n").encode())
    tasks = []
    coco_tasks = []
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_trainval, num_test))):
        ids = image_ids(split, count)
        tasks += [(root, seed, split_index, image_id, i, (height, width)) for i, image_id in enumerate(ids)]
        _write_if_changed(os.path.join(root, "ImageSets", "Main", split + ".txt"),
                          "".join(i + "\n" for i in ids).encode())
        for kind in ("crowd", "empty") if coco and count else ():
            coco_tasks += [(root, seed, split_index, image_id, _GENERATOR_OFFSETS[kind] + i,
                            (height, width), kind)
                           for i, image_id in enumerate(coco_only_image_ids(split, kind,
                                                                            max(1, count // 10)))]
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if num_workers > 1 and len(tasks) >= 32:
        import concurrent.futures
        import multiprocessing

        # fork: the workers need nothing but this module; no thread pools exist yet in the parent.
        context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            counts = list(pool.map(_write_image, tasks + coco_tasks, chunksize=16))
    else:
        counts = [_write_image(task) for task in tasks + coco_tasks]
    stats = {"trainval": num_trainval, "test": num_test,
             "objects": sum(c[0] for c in counts[:len(tasks)]),
             "difficult": sum(c[1] for c in counts[:len(tasks)]),
             "truncated": sum(c[2] for c in counts[:len(tasks)])}
    if coco:
        os.makedirs(os.path.join(root, COCO_DIR), exist_ok=True)
        for split_index, split in enumerate(SPLITS):
            images = []
            for task, count in zip(tasks + coco_tasks, counts):
                if task[2] == split_index:
                    kind = task[6] if len(task) > 6 else "voc"
                    coco_id = (split_index * _COCO_IMAGE_BLOCK + _COCO_OFFSETS[kind]
                               + task[4] - _GENERATOR_OFFSETS[kind] + 1)
                    images.append((coco_id, task[3], count[3]))
            _write_if_changed(coco_annotations_path(root, split),
                              coco_json((height, width), images,
                                        split_index * _COCO_ANN_BLOCK + 1))
        stats["coco_images"] = len(counts)
        stats["coco_objects"] = sum(c[0] for c in counts)
        stats["crowd"] = sum(c[1] for c in counts)
        stats["empty"] = sum(1 for c in counts if c[0] == 0)
    logger.info("sample data in %s: %s", root, stats)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="sample_data", help="folder to write the VOC-format dataset to")
    parser.add_argument("--num_trainval", type=int, default=400, help="images in the trainval split")
    parser.add_argument("--num_test", type=int, default=100, help="images in the test split")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (same seed -> same files)")
    parser.add_argument("--image_height", type=int, default=DEFAULT_IMAGE_SIZE[0], help="image height in pixels")
    parser.add_argument("--image_width", type=int, default=DEFAULT_IMAGE_SIZE[1], help="image width in pixels")
    parser.add_argument("--coco", action="store_true",
                        help="also write COCO JSON (annotations/instances_<split>.json) for the same "
                             "images, with crowd regions and some images without objects")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="parallel processes (default: the usable cores); the output does not depend on it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        stats = generate(args.output_dir, args.num_trainval, args.num_test, args.seed,
                         (args.image_height, args.image_width), args.num_workers, coco=args.coco)
    except ValueError as e:
        print(f"sample_data: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sample_data: cannot write to {args.output_dir}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {stats['trainval']} trainval + {stats['test']} test images ({stats['objects']} objects, "
          f"{stats['truncated']} truncated, {stats['difficult']} difficult) to {args.output_dir}")
    if args.coco:
        print(f"and COCO JSON {coco_annotations_path(args.output_dir, '<split>')} ({stats['coco_images']} "
              f"images, {stats['coco_objects']} annotations, {stats['crowd']} crowd, {stats['empty']} "
              "images without objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
