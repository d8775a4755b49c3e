"""Generators of small Pascal VOC-format folders with real image files, for tests and benchmarks.

    from tests.voc_fixtures import make_voc_dataset, add_bad_example
    fx = make_voc_dataset(tmp_path / "VOC", num_images=6, seed=0)   # + one image per odd case
    fx.root                       # str: the VOC root (Annotations/, JPEGImages/, ImageSets/Main/)
    fx.ids                        # image ids in sorted order ('000001', ...)
    fx.splits                     # {'trainval': all ids, 'train': even positions, 'val': odd}
    img = fx.by_id['000003']      # FixtureImage: width, height, pixels (RGB uint8 as PIL decodes
                                  # the written file), objects (FixtureObject), cases, ...
    img.bboxes_normalized()       # float32 [n, 4] (ymin, xmin, ymax, xmax) = what a converter
                                  # must store (coordinates / size, the original's convention)
    fx.ids_with_case('grayscale_jpeg')
    bad = add_bad_example(fx.root, 'truncated_image', seed=1)   # BadExample(kind, image_id, path)

Odd cases (ODD_CASES), one extra image each: difficult=1, truncated=1, odd whitespace and
newlines inside the XML text, a grayscale JPEG, a PNG saved under a .jpg name, boxes touching
every border (and one starting at 0), an RGBA PNG and a palette PNG found through the XML's
<filename>, a CMYK JPEG, a progressive JPEG, an XML <size> that disagrees with the image, float
coordinates, objects without <difficult>/<truncated>, a person with <part> boxes (to be ignored).
Regular images have 1..max_objects objects with random difficult (p=0.2) and truncated (p=0.3).
Everything is deterministic in ``seed``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

ODD_CASES: tuple[str, ...] = (
    "difficult", "truncated", "odd_whitespace", "grayscale_jpeg", "png_named_jpg",
    "border_boxes", "rgba_png", "palette_png", "cmyk_jpeg", "progressive_jpeg", "size_mismatch",
    "float_coords", "missing_flags", "person_parts",
)

BAD_KINDS: tuple[str, ...] = (
    "missing_image", "corrupt_image", "truncated_image", "empty_image", "malformed_xml",
    "empty_xml", "no_objects", "missing_name", "missing_bndbox", "missing_coord", "bad_number",
    "unknown_class", "box_outside", "xmin_ge_xmax", "bad_difficult",
)


@dataclasses.dataclass
class FixtureObject:
    """An object as written: bbox is (xmin, ymin, xmax, ymax) in the XML's pixel units."""
    name: str
    label: int
    bbox: tuple[float, float, float, float]
    difficult: int = 0
    truncated: int = 0


@dataclasses.dataclass
class FixtureImage:
    """One written image and its annotation.

    pixels: uint8 [H, W, 3] RGB, the written file as PIL decodes it (alpha dropped, gray
    repeated, CMYK converted by PIL). stored_format: what a converter should store ('JPEG' or
    'PNG'). exact_pixels: False for JPEG files, whose decoders may differ by a few levels.
    """
    image_id: str
    image_path: str
    xml_path: str
    width: int
    height: int
    file_format: str
    stored_format: str
    exact_pixels: bool
    pixels: np.ndarray
    objects: list[FixtureObject]
    cases: tuple[str, ...] = ()

    @property
    def labels(self) -> np.ndarray:
        return np.array([o.label for o in self.objects], np.int64)

    @property
    def difficult(self) -> np.ndarray:
        return np.array([o.difficult for o in self.objects], np.int64)

    @property
    def truncated(self) -> np.ndarray:
        return np.array([o.truncated for o in self.objects], np.int64)

    def bboxes_normalized(self) -> np.ndarray:
        """float32 [n, 4] (ymin, xmin, ymax, xmax): coordinates divided by height / width."""
        rows = [(o.bbox[1] / self.height, o.bbox[0] / self.width,
                 o.bbox[3] / self.height, o.bbox[2] / self.width) for o in self.objects]
        return np.array(rows, np.float32).reshape(-1, 4)


@dataclasses.dataclass
class VocFixture:
    """A generated VOC-format folder."""
    root: str
    images: list[FixtureImage]
    splits: dict[str, list[str]]
    class_names: tuple[str, ...]

    @property
    def ids(self) -> list[str]:
        return [im.image_id for im in self.images]

    @property
    def by_id(self) -> dict[str, FixtureImage]:
        return {im.image_id: im for im in self.images}

    def ids_with_case(self, case: str) -> list[str]:
        return [im.image_id for im in self.images if case in im.cases]


@dataclasses.dataclass
class BadExample:
    """A bad example added by add_bad_example: the error must name ``path``."""
    kind: str
    image_id: str
    path: str


# ----------------------------------------------------------------------------- writing


def _xml_text(image_id: str, filename: str, size: tuple[int, int, int],
              objects: Sequence[FixtureObject], odd_whitespace: bool = False,
              omit_flags: bool = False, person_parts: bool = False) -> str:
    """A VOC annotation in the layout of the real files (source, owner, size, segmented...)."""
    def tag(name: str, value: object, indent: str) -> str:
        if odd_whitespace:
            return f"{indent}<{name}>\n\t  {value} \n{indent}</{name}>\n"
        return f"{indent}<{name}>{value}</{name}>\n"

    def coord(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))

    parts = ["<annotation>\n", tag("folder", "VOC2007", "\t"), tag("filename", filename, "\t"),
             "\t<source>\n\t\t<database>The VOC2007 Database</database>\n"
             "\t\t<annotation>PASCAL VOC2007</annotation>\n\t</source>\n",
             "\t<size>\n", tag("width", size[0], "\t\t"), tag("height", size[1], "\t\t"),
             tag("depth", size[2], "\t\t"), "\t</size>\n", tag("segmented", 0, "\t")]
    for obj in objects:
        parts.append("\t<object>\n")
        parts.append(tag("name", obj.name, "\t\t"))
        parts.append(tag("pose", "Unspecified", "\t\t"))
        if not omit_flags:
            parts.append(tag("truncated", obj.truncated, "\t\t"))
            parts.append(tag("difficult", obj.difficult, "\t\t"))
        parts.append("\t\t<bndbox>\n")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox):
            parts.append(tag(key, coord(value), "\t\t\t"))
        parts.append("\t\t</bndbox>\n")
        if person_parts and obj.name == "person":
            # VOC person layout: parts have their own name and bndbox, inside the object.
            x0, y0, x1, y1 = obj.bbox
            parts.append(f"\t\t<part>\n\t\t\t<name>head</name>\n\t\t\t<bndbox>\n"
                         f"\t\t\t\t<xmin>{int(x0)}</xmin>\n\t\t\t\t<ymin>{int(y0)}</ymin>\n"
                         f"\t\t\t\t<xmax>{int(x1) + 50}</xmax>\n\t\t\t\t<ymax>{int(y1)}</ymax>\n"
                         f"\t\t\t</bndbox>\n\t\t</part>\n")
        parts.append("\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _random_pixels(rng: np.random.Generator, width: int, height: int,
                   objects: Sequence[FixtureObject]) -> np.ndarray:
    """A smooth gradient with filled boxes and mild noise: compresses like a photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c = rng.uniform(0, 255, 3)
    img = np.stack([c[0] * x / max(width, 1), c[1] * y / max(height, 1),
                    np.full_like(x, c[2])], axis=-1)
    for obj in objects:
        x0, y0, x1, y1 = (int(v) for v in obj.bbox)
        img[max(y0 - 1, 0):y1, max(x0 - 1, 0):x1] = rng.uniform(0, 255, 3)
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _random_objects(rng: np.random.Generator, width: int, height: int, class_names: Sequence[str],
                    count: int) -> list[FixtureObject]:
    objects = []
    for _ in range(count):
        # VOC pixel coordinates are 1-based: 1 <= xmin < xmax <= width.
        xmin = int(rng.integers(1, max(2, width // 2)))
        ymin = int(rng.integers(1, max(2, height // 2)))
        xmax = int(rng.integers(xmin + 1, width + 1))
        ymax = int(rng.integers(ymin + 1, height + 1))
        label = int(rng.integers(1, len(class_names) + 1))
        objects.append(FixtureObject(class_names[label - 1], label, (xmin, ymin, xmax, ymax),
                                     difficult=int(rng.random() < 0.2),
                                     truncated=int(rng.random() < 0.3)))
    return objects


def _write_image(path: str, pixels: np.ndarray, kind: str, quality: int) -> Image.Image:
    """Writes pixels in one of the fixture's file kinds; returns the image as written."""
    img = Image.fromarray(pixels, "RGB")
    if kind == "jpeg":
        img.save(path, "JPEG", quality=quality)
    elif kind == "progressive_jpeg":
        img.save(path, "JPEG", quality=quality, progressive=True)
    elif kind == "grayscale_jpeg":
        img.convert("L").save(path, "JPEG", quality=quality)
    elif kind == "cmyk_jpeg":
        img.convert("CMYK").save(path, "JPEG", quality=quality)
    elif kind == "png":
        img.save(path, "PNG")
    elif kind == "rgba_png":
        alpha = Image.fromarray((np.arange(pixels.shape[1]) % 256).astype(np.uint8)[None, :]
                                .repeat(pixels.shape[0], 0), "L")
        rgba = img.copy()
        rgba.putalpha(alpha)
        rgba.save(path, "PNG")
    elif kind == "palette_png":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, "PNG")
    else:
        raise ValueError(f"unknown image kind {kind}")
    return Image.open(path)


def _decoded_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode == "RGBA":
            return np.asarray(im)[..., :3].copy()  # decoders drop alpha; no compositing
        return np.asarray(im.convert("RGB")).copy()


def _case_setup(case: str) -> dict:
    """Per odd case: image kind, file extension, stored format, XML options."""
    setup = {"kind": "jpeg", "ext": ".jpg", "stored": "JPEG", "exact": False, "xml": {}}
    if case == "grayscale_jpeg":
        setup["kind"] = "grayscale_jpeg"
    elif case == "progressive_jpeg":
        setup["kind"] = "progressive_jpeg"
    elif case == "png_named_jpg":
        setup.update(kind="png", stored="PNG", exact=True)
    elif case == "rgba_png":
        setup.update(kind="rgba_png", ext=".png", stored="PNG", exact=True)
    elif case == "palette_png":
        setup.update(kind="palette_png", ext=".png", stored="PNG", exact=True)
    elif case == "cmyk_jpeg":
        setup.update(kind="cmyk_jpeg", stored="PNG", exact=True)  # re-encoded losslessly
    elif case == "odd_whitespace":
        setup["xml"] = {"odd_whitespace": True}
    elif case == "missing_flags":
        setup["xml"] = {"omit_flags": True}
    elif case == "person_parts":
        setup["xml"] = {"person_parts": True}
    return setup


def _write_example(root: str, image_id: str, width: int, height: int,
                   objects: list[FixtureObject], rng: np.random.Generator, case: str | None,
                   quality: int) -> FixtureImage:
    setup = _case_setup(case or "")
    filename = image_id + setup["ext"]
    image_path = os.path.join(root, "JPEGImages", filename)
    pixels = _random_pixels(rng, width, height, objects)
    written = _write_image(image_path, pixels, setup["kind"], quality)
    file_format = written.format + ("" if written.mode in ("RGB", "L") else f"/{written.mode}")
    written.close()
    xml_size = (width, height, 3)
    if case == "size_mismatch":
        xml_size = (width + 17, height - 5, 3)
    xml = _xml_text(image_id, filename, xml_size, objects, **setup["xml"])
    xml_path = os.path.join(root, "Annotations", image_id + ".xml")
    with open(xml_path, "w", encoding="utf-8") as f:
        f.write(xml)
    return FixtureImage(image_id=image_id, image_path=image_path, xml_path=xml_path, width=width,
                        height=height, file_format=file_format, stored_format=setup["stored"],
                        exact_pixels=setup["exact"], pixels=_decoded_rgb(image_path),
                        objects=objects, cases=(case,) if case else ())


def _case_objects(case: str, rng: np.random.Generator, width: int, height: int,
                  class_names: Sequence[str]) -> list[FixtureObject]:
    objects = _random_objects(rng, width, height, class_names, 2)
    for obj in objects:
        obj.difficult = obj.truncated = 0
    if case == "difficult":
        objects[0].difficult = 1
    elif case == "truncated":
        objects[1].truncated = 1
    elif case == "odd_whitespace":
        objects[0].difficult = 1
        objects[1].truncated = 1
    elif case == "border_boxes":
        objects[0].bbox = (1, 1, width, height)   # touches every border (1-based VOC pixels)
        objects[1].bbox = (0, 0, width // 2, height)  # 0-based data starts at 0
    elif case == "float_coords":
        objects[0].bbox = (1.5, 2.25, width - 0.5, height - 1.75)
    elif case == "person_parts" and "person" in class_names:
        objects[0].name = "person"
        objects[0].label = list(class_names).index("person") + 1
    return objects


def make_voc_dataset(root: str | os.PathLike, num_images: int = 6, seed: int = 0,
                     classes: Sequence[str] = VOC_CLASSES,
                     odd_cases: bool | Iterable[str] = True,
                     image_size: tuple[int, int] | None = None,
                     size_range: tuple[int, int] = (48, 128), max_objects: int = 3,
                     jpeg_quality: int = 90,
                     splits: dict[str, Sequence[str]] | None = None) -> VocFixture:
    """Writes a VOC-format folder at ``root`` and returns what it wrote.

    Args:
      root: folder to create (Annotations/, JPEGImages/, ImageSets/Main/).
      num_images: regular RGB JPEG images ('000001', ...); odd-case images come after them.
      seed: everything (sizes, boxes, classes, flags, pixels) follows from it.
      classes: class names, label = index + 1.
      odd_cases: True for all of ODD_CASES, False for none, or an iterable of their names.
      image_size: (width, height) of every image; default random sides in size_range.
      max_objects: regular images have 1..max_objects objects.
      jpeg_quality: JPEG quality of the written files.
      splits: {name: ids} written to ImageSets/Main/<name>.txt; default trainval = all,
        train = even positions, val = odd positions.
    """
    root = os.fspath(root)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    if odd_cases is True:
        cases: list[str] = list(ODD_CASES)
    elif odd_cases is False:
        cases = []
    else:
        cases = list(odd_cases)
        unknown = set(cases) - set(ODD_CASES)
        if unknown:
            raise ValueError(f"unknown odd cases {sorted(unknown)}; known: {ODD_CASES}")
    rng = np.random.default_rng(seed)
    images = []
    plan: list[str | None] = [None] * num_images + cases
    for index, case in enumerate(plan, start=1):
        if image_size is not None:
            width, height = image_size
        else:
            width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        image_id = f"{index:06d}"
        if case is None:
            objects = _random_objects(rng, width, height, classes,
                                      int(rng.integers(1, max_objects + 1)))
        else:
            objects = _case_objects(case, rng, width, height, classes)
        images.append(_write_example(root, image_id, width, height, objects, rng, case,
                                     jpeg_quality))
    ids = [im.image_id for im in images]
    if splits is None:
        splits = {"trainval": ids, "train": ids[0::2], "val": ids[1::2]}
    for name, split_ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Main", name + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in split_ids))
    return VocFixture(root=root, images=images, splits={k: list(v) for k, v in splits.items()},
                      class_names=tuple(classes))


def write_label_map(path: str | os.PathLike, class_names: Sequence[str]) -> str:
    """Writes a label-map file (one name per line, ids 1..N) with a comment and a blank line."""
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write("# label map: line n -> label n\n\n")
        f.write("".join(f"{name}\n" for name in class_names))
    return path


def add_bad_example(root: str | os.PathLike, kind: str, image_id: str | None = None,
                    seed: int = 0, classes: Sequence[str] = VOC_CLASSES) -> BadExample:
    """Adds one bad example of ``kind`` (BAD_KINDS) to a VOC folder, id 'bad_<kind>' by default.

    The example is also appended to ImageSets/Main/trainval.txt if that file exists. The
    returned ``path`` is the file a good error message must name (the XML or the image).
    """
    if kind not in BAD_KINDS:
        raise ValueError(f"unknown bad kind {kind}; known: {BAD_KINDS}")
    root = os.fspath(root)
    image_id = image_id or f"bad_{kind}"
    rng = np.random.default_rng(seed)
    width, height = 64, 48
    objects = [FixtureObject(classes[0], 1, (5, 6, 40, 30))]
    image_path = os.path.join(root, "JPEGImages", image_id + ".jpg")
    xml_path = os.path.join(root, "Annotations", image_id + ".xml")
    _write_image(image_path, _random_pixels(rng, width, height, objects), "jpeg", 90).close()
    xml = _xml_text(image_id, image_id + ".jpg", (width, height, 3), objects)
    blamed = xml_path
    if kind == "missing_image":
        os.remove(image_path)
        blamed = image_path
    elif kind in ("corrupt_image", "truncated_image", "empty_image"):
        with open(image_path, "rb") as f:
            data = f.read()
        data = {"corrupt_image": bytes(rng.integers(0, 256, len(data), dtype=np.uint8)),
                "truncated_image": data[: len(data) // 2],
                "empty_image": b""}[kind]
        with open(image_path, "wb") as f:
            f.write(data)
        blamed = image_path
    elif kind == "malformed_xml":
        xml = xml[: xml.rindex("</annotation>")]  # the file ends before the root is closed
    elif kind == "empty_xml":
        xml = ""
    elif kind == "no_objects":
        xml = _xml_text(image_id, image_id + ".jpg", (width, height, 3), [])
    elif kind == "missing_name":
        xml = xml.replace(f"<name>{classes[0]}</name>", "")
    elif kind == "missing_bndbox":
        start, end = xml.index("<bndbox>"), xml.index("</bndbox>") + len("</bndbox>")
        xml = xml[:start] + xml[end:]
    elif kind == "missing_coord":
        xml = xml.replace("<xmax>40</xmax>", "")
    elif kind == "bad_number":
        xml = xml.replace("<ymin>6</ymin>", "<ymin>six</ymin>")
    elif kind == "unknown_class":
        xml = xml.replace(f"<name>{classes[0]}</name>", "<name>unicorn</name>")
    elif kind == "box_outside":
        xml = xml.replace("<xmax>40</xmax>", f"<xmax>{width + 10}</xmax>")
    elif kind == "xmin_ge_xmax":
        xml = xml.replace("<xmin>5</xmin>", "<xmin>40</xmin>")
    elif kind == "bad_difficult":
        xml = xml.replace("<difficult>0</difficult>", "<difficult>2</difficult>")
    with open(xml_path, "w", encoding="utf-8") as f:
        f.write(xml)
    split_file = os.path.join(root, "ImageSets", "Main", "trainval.txt")
    if os.path.exists(split_file):
        with open(split_file, "a") as f:
            f.write(image_id + "\n")
    return BadExample(kind=kind, image_id=image_id, path=blamed)
