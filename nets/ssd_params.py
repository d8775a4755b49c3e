"""SSD hyper-parameters (``SSDParams``), the anchor presets and the anchor generator.

Everything that makes SSD300 differ from SSD512 lives here as data: image size, feature
layers, the extra blocks after conv7, anchor sizes/ratios/steps. One builder
(:mod:`nets.ssd_vgg`) turns an ``SSDParams`` into a network.

Anchors are ``(ymin, xmin, ymax, xmax)``, normalized to the image, unclipped, in the order
(feature layer, row, column, anchor) that the flattened network outputs use. Per location
the order is Caffe's PriorBox order: the square of side ``min_size``, the square of side
``sqrt(min_size * max_size)``, then for each aspect ratio ``r`` in list order a box of
width ``min_size * sqrt(r)`` and height ``min_size / sqrt(r)`` (the lists already hold
``r`` and ``1/r`` next to each other, as Caffe's ``flip: true`` produces them).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from tf_extended.boxes import DEFAULT_PRIOR_SCALING

# Name used for hand-made anchor sizes that follow no preset.
CUSTOM_PRESET = "custom"

# Caffe's aspect-ratio lists with flip=true expanded: [2] -> (2, 1/2); [2, 3] -> (2, 1/2, 3, 1/3).
_RATIOS_2 = (2.0, 0.5)
_RATIOS_23 = (2.0, 0.5, 3.0, 1.0 / 3.0)


@dataclasses.dataclass(frozen=True)
class ExtraBlock:
    """One SSD extra block after conv7: ``conv1x1`` then a strided/padded ``conv{k}x{k}``.

    Sizes follow Caffe exactly: the 1x1 conv (stride 1), an explicit symmetric zero padding
    of ``padding`` pixels, then a ``kernel x kernel`` VALID conv with ``stride``, so the
    output side is ``(n + 2 * padding - kernel) // stride + 1`` (Caffe's floor rule).

    Attributes:
      name: TF-Slim scope of the block, e.g. ``'block8'``.
      num_1x1: output channels of the 1x1 conv.
      num_outputs: output channels of the second conv.
      kernel: kernel side of the second conv (3, or 4 for SSD512's block12).
      stride: stride of the second conv.
      padding: explicit zero padding before the second conv.
    """

    name: str
    num_1x1: int
    num_outputs: int
    kernel: int = 3
    stride: int = 2
    padding: int = 1

    @property
    def conv_scope(self) -> str:
        """TF-Slim name of the second conv: ``conv3x3`` or ``conv4x4``."""
        return f"conv{self.kernel}x{self.kernel}"

    def output_size(self, size: int) -> int:
        """Output side for an input side ``size`` (Caffe/VALID floor rule)."""
        return (size + 2 * self.padding - self.kernel) // self.stride + 1


# Extra blocks of the original (balancap/SSD-Tensorflow) and Caffe SSD (conv6_x .. conv10_x).
SSD300_EXTRA_BLOCKS = (
    ExtraBlock("block8", 256, 512, 3, 2, 1),    # Caffe conv6_1/conv6_2: 19 -> 10
    ExtraBlock("block9", 128, 256, 3, 2, 1),    # conv7_x: 10 -> 5
    ExtraBlock("block10", 128, 256, 3, 1, 0),   # conv8_x: 5 -> 3 (pad 0, stride 1)
    ExtraBlock("block11", 128, 256, 3, 1, 0),   # conv9_x: 3 -> 1
)
SSD512_EXTRA_BLOCKS = (
    ExtraBlock("block8", 256, 512, 3, 2, 1),    # 32 -> 16
    ExtraBlock("block9", 128, 256, 3, 2, 1),    # 16 -> 8
    ExtraBlock("block10", 128, 256, 3, 2, 1),   # 8 -> 4
    ExtraBlock("block11", 128, 256, 3, 2, 1),   # 4 -> 2
    ExtraBlock("block12", 128, 256, 4, 1, 1),   # Caffe conv10_2: kernel 4, pad 1: 2 -> 1
)


def ssd_rule_sizes(img_side: float, num_layers: int, first: float, min_ratio: int,
                   max_ratio: int) -> tuple[tuple[float, float], ...]:
    """Anchor (min, max) sizes in pixels by Caffe SSD's rule (ssd_pascal.py).

    The first layer gets ``first`` (min) and ``min_ratio`` (max) percent of the image; the others
    run from ``min_ratio`` in integer steps of ``floor((max_ratio - min_ratio) / (n - 2))``
    percent, each max size being the next layer's min size. E.g. ``ssd_rule_sizes(300, 6, 10,
    20, 90)`` gives SSD300's 'voc' sizes (30, 60), (60, 111), ... (264, 315).
    """
    step = (max_ratio - min_ratio) // (num_layers - 2)
    ratios = [min_ratio + k * step for k in range(num_layers)]
    sizes = [(img_side * first / 100, img_side * min_ratio / 100)]
    sizes += [(img_side * ratios[k] / 100, img_side * ratios[k + 1] / 100)
              for k in range(num_layers - 1)]
    return tuple((round(a, 4), round(b, 4)) for a, b in sizes)


# Anchor sizes in pixels of the input image, (min_size, max_size) per feature layer.
# 'voc': Caffe SSD's VOC0712 models (ssd_pascal.py: conv4_3 at 10%, then 20%..90% of 300 in
#   steps of 17%; for 512: 7%, then 15%..90%). 'coco_ft': the COCO / "_ft" models and the
#   original TF project's defaults (300: 7%, then 15%..90% in steps of 18%; 512: 4%, 10%..90%).
# The '*_caffe' variants truncate every size to an int, as Caffe's PriorBox did for the
#   published .caffemodels (DESIGN.md §7): anchors for a converted Caffe model must use them.
#   For SSD300 'voc' sizes are already whole, so 'voc' == 'voc_caffe' there.
ANCHOR_PRESETS: dict[tuple[int, int], dict[str, tuple[tuple[float, float], ...]]] = {
    (300, 300): {
        "voc": ((30., 60.), (60., 111.), (111., 162.), (162., 213.), (213., 264.), (264., 315.)),
        "coco_ft": ((21., 45.), (45., 99.), (99., 153.), (153., 207.), (207., 261.), (261., 315.)),
    },
    (512, 512): {
        "voc": ((35.84, 76.8), (76.8, 153.6), (153.6, 230.4), (230.4, 307.2), (307.2, 384.0),
                (384.0, 460.8), (460.8, 537.6)),
        "coco_ft": ((20.48, 51.2), (51.2, 133.12), (133.12, 215.04), (215.04, 296.96),
                    (296.96, 378.88), (378.88, 460.8), (460.8, 542.72)),
    },
    # The light CPU nets' 160x160 input (5 feature layers), by the same rules:
    # 'voc' (16, 32), (32, 68.8), (68.8, 105.6), (105.6, 142.4), (142.4, 179.2).
    (160, 160): {"voc": ssd_rule_sizes(160, 5, 10, 20, 90),
                 "coco_ft": ssd_rule_sizes(160, 5, 7, 15, 90)},
}
for _table in ANCHOR_PRESETS.values():
    for _name in list(_table):
        _table[_name + "_caffe"] = tuple((float(math.floor(a)), float(math.floor(b)))
                                         for a, b in _table[_name])
del _table, _name

# The preset a new net gets. 'voc' is the reference recipe (DESIGN.md §7, 77.2 / 79.8 mAP) that
# training in this project follows; the original's published ssd_300_vgg.ckpt is a 'coco_ft'
# model and must be loaded with that preset (its checkpoint has no sidecar to say so).
DEFAULT_ANCHOR_PRESET = "voc"


def as_tuples(value):
    """Nested lists/tuples -> nested tuples (other values unchanged)."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(v) for v in value)
    return value


def anchor_preset_names() -> tuple[str, ...]:
    """All preset names (for flags' help texts and error messages)."""
    return tuple(sorted({n for table in ANCHOR_PRESETS.values() for n in table})) + (CUSTOM_PRESET,)


@dataclasses.dataclass(frozen=True)
class SSDParams:
    """All hyper-parameters of an SSD network (the original's fields, plus three).

    Attributes:
      img_shape: (height, width) of the network input in pixels.
      num_classes: number of classes including background (21 for VOC).
      no_annotation_label: label of unannotated anchors (kept from the original; = num_classes).
      feat_layers: end points used as feature maps, e.g. ('block4', 'block7', ...).
      feat_shapes: (h, w) of each feature map for ``img_shape``.
      anchor_size_bounds: informational only (the original never used it).
      anchor_sizes: (min_size, max_size) in pixels per feature layer.
      anchor_ratios: aspect ratios w/h per layer, each ``r`` followed by ``1/r``.
      anchor_steps: anchor grid step in pixels per layer (Caffe's ``step``).
      anchor_offset: centre offset in grid cells (Caffe's ``offset``, 0.5).
      normalizations: > 0: L2-normalize this layer with a learned scale initialised to it.
      prior_scaling: Caffe's prior variances in ``(x, y, w, h)`` order.
      anchor_preset: name of the anchor-size preset (``'custom'`` for hand-made sizes).
      extra_blocks: the blocks after conv7 (architecture, see :class:`ExtraBlock`).
    """

    img_shape: tuple[int, int]
    num_classes: int
    no_annotation_label: int
    feat_layers: tuple[str, ...]
    feat_shapes: tuple[tuple[int, int], ...]
    anchor_size_bounds: tuple[float, float]
    anchor_sizes: tuple[tuple[float, float], ...]
    anchor_ratios: tuple[tuple[float, ...], ...]
    anchor_steps: tuple[float, ...]
    anchor_offset: float
    normalizations: tuple[float, ...]
    prior_scaling: tuple[float, float, float, float]
    anchor_preset: str = DEFAULT_ANCHOR_PRESET
    extra_blocks: tuple[ExtraBlock, ...] = SSD300_EXTRA_BLOCKS

    def __post_init__(self) -> None:
        # Nested sequences become tuples, so that the dataclass is hashable and compares
        # equal however it was made (lists from JSON, tuples from code).
        for field in dataclasses.fields(self):
            if field.name != "extra_blocks":
                object.__setattr__(self, field.name, as_tuples(getattr(self, field.name)))
        object.__setattr__(self, "extra_blocks", tuple(self.extra_blocks))
        self._validate()

    def _validate(self) -> None:
        n = len(self.feat_layers)
        for name in ("feat_shapes", "anchor_sizes", "anchor_ratios", "anchor_steps",
                     "normalizations"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SSDParams.{name} has {len(getattr(self, name))} entries, "
                                 f"but feat_layers has {n}: {self.feat_layers}.")
        if self.num_classes < 2:
            raise ValueError(f"SSDParams.num_classes is {self.num_classes}, but must be >= 2 "
                             "(background + at least one class).")
        if len(self.img_shape) != 2:
            raise ValueError(f"SSDParams.img_shape is {self.img_shape}, but must be (height, width).")
        for sizes in self.anchor_sizes:
            if len(sizes) != 2:
                raise ValueError(f"SSDParams.anchor_sizes entries must be (min_size, max_size), "
                                 f"got {sizes}.")
        table = ANCHOR_PRESETS.get(tuple(self.img_shape))
        if self.anchor_preset != CUSTOM_PRESET:
            if self.anchor_preset not in anchor_preset_names():
                raise ValueError(f"Unknown anchor preset {self.anchor_preset!r}; valid: "
                                 f"{', '.join(anchor_preset_names())}.")
            if table is not None and table[self.anchor_preset] != self.anchor_sizes:
                raise ValueError(
                    f"SSDParams.anchor_sizes {self.anchor_sizes} are not those of preset "
                    f"{self.anchor_preset!r} for img_shape {self.img_shape}: use "
                    f"params.with_anchor_preset({self.anchor_preset!r}), or "
                    f"anchor_preset='custom' for hand-made sizes.")

    # -- derived values -----------------------------------------------------------------

    @property
    def num_anchors_per_location(self) -> tuple[int, ...]:
        """Anchors per feature-map cell for each layer: 2 squares + one per ratio."""
        return tuple(2 + len(r) for r in self.anchor_ratios)

    @property
    def num_anchors(self) -> int:
        """Total number of anchors (8,732 for SSD300, 24,564 for SSD512)."""
        return sum(h * w * a for (h, w), a in zip(self.feat_shapes, self.num_anchors_per_location))

    def with_num_classes(self, num_classes: int) -> "SSDParams":
        """A copy for ``num_classes`` classes (background included); ``no_annotation_label``
        follows, as in the original (it equals num_classes)."""
        return dataclasses.replace(self, num_classes=int(num_classes),
                                   no_annotation_label=int(num_classes))

    def with_anchor_preset(self, preset: str) -> "SSDParams":
        """A copy with the anchor sizes of ``preset`` for this ``img_shape``."""
        table = ANCHOR_PRESETS.get(tuple(self.img_shape))
        if table is None or preset not in table:
            known = ", ".join(sorted(table)) if table else "none"
            raise ValueError(f"No anchor preset {preset!r} for img_shape {self.img_shape} "
                             f"(presets for this size: {known}).")
        return dataclasses.replace(self, anchor_sizes=table[preset], anchor_preset=preset)

    def with_img_shape(self, img_shape: Sequence[int]) -> "SSDParams":
        """A copy for another input size with the feature shapes recomputed.

        Anchor sizes and steps are kept in pixels, so the preset becomes ``'custom'``
        unless the new size has the same preset table entry. Meant for small test nets.
        """
        img_shape = (int(img_shape[0]), int(img_shape[1]))
        feat_shapes = compute_feat_shapes(img_shape, self.feat_layers, self.extra_blocks)
        preset = self.anchor_preset
        table = ANCHOR_PRESETS.get(img_shape)
        if table is None or table.get(preset) != self.anchor_sizes:
            preset = CUSTOM_PRESET
        return dataclasses.replace(self, img_shape=img_shape, feat_shapes=feat_shapes,
                                   anchor_preset=preset)


# How many stride-2 steps (each ``ceil(n / 2)``: VGG's SAME 2x2 pools, MobileNetV2's padded
# stride-2 convs) lie before each trunk end point a feature layer can use.
TRUNK_DOWNSAMPLINGS = {
    # VGG-16 and the light VGG: block1 at the input size, pool1..pool4 after blocks 1..4,
    # pool5 (3x3, stride 1), conv6 and conv7 keep the size.
    "block1": 0, "block2": 1, "block3": 2, "block4": 3, "block5": 4, "block6": 4, "block7": 4,
    # MobileNetV2 (nets/ssd_mobilenet.py): block 13's expansion at stride 16, Conv_1 at 32.
    "expanded_conv_13_expansion": 4, "Conv_1": 5,
}


def compute_feat_shapes(img_shape: Sequence[int], feat_layers: Sequence[str],
                        extra_blocks: Sequence[ExtraBlock]) -> tuple[tuple[int, int], ...]:
    """Feature-map (h, w) of each layer in ``feat_layers`` for an input ``img_shape``.

    Trunk end points (:data:`TRUNK_DOWNSAMPLINGS`) halve the size rounding up once per stride-2
    step before them; the extra blocks follow :meth:`ExtraBlock.output_size`, starting from the
    deepest trunk end point among ``feat_layers`` (VGG's block7, MobileNetV2's Conv_1).
    """
    def downsampled(steps: int) -> tuple[int, int]:
        h, w = int(img_shape[0]), int(img_shape[1])
        for _ in range(steps):
            h, w = -(-h // 2), -(-w // 2)
        return h, w

    sizes = {name: downsampled(steps) for name, steps in TRUNK_DOWNSAMPLINGS.items()}
    deepest = max((TRUNK_DOWNSAMPLINGS[n] for n in feat_layers if n in TRUNK_DOWNSAMPLINGS),
                  default=TRUNK_DOWNSAMPLINGS["block7"])
    h, w = downsampled(deepest)
    for block in extra_blocks:
        h, w = block.output_size(h), block.output_size(w)
        if h < 1 or w < 1:
            raise ValueError(f"img_shape {tuple(img_shape)} is too small: {block.name} would "
                             f"have an empty output.")
        sizes[block.name] = (h, w)
    try:
        return tuple(sizes[name] for name in feat_layers)
    except KeyError as err:
        raise ValueError(f"Unknown feature layer {err.args[0]!r}; known: {', '.join(sizes)}.") from None


def ssd_300_vgg_params() -> SSDParams:
    """SSD300 defaults: the original's fields with the 'voc' anchor preset (DESIGN.md §7)."""
    return SSDParams(
        img_shape=(300, 300),
        num_classes=21,
        no_annotation_label=21,
        feat_layers=("block4", "block7", "block8", "block9", "block10", "block11"),
        feat_shapes=((38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)),
        anchor_size_bounds=(0.15, 0.90),
        anchor_sizes=ANCHOR_PRESETS[(300, 300)][DEFAULT_ANCHOR_PRESET],
        anchor_ratios=(_RATIOS_2, _RATIOS_23, _RATIOS_23, _RATIOS_23, _RATIOS_2, _RATIOS_2),
        anchor_steps=(8, 16, 32, 64, 100, 300),   # Caffe ssd_pascal.py steps
        anchor_offset=0.5,
        normalizations=(20, -1, -1, -1, -1, -1),  # conv4_3_norm scale_filler 20
        prior_scaling=DEFAULT_PRIOR_SCALING,
        anchor_preset=DEFAULT_ANCHOR_PRESET,
        extra_blocks=SSD300_EXTRA_BLOCKS,
    )


def ssd_512_vgg_params() -> SSDParams:
    """SSD512 defaults: the original's fields with the 'voc' anchor preset (DESIGN.md §7)."""
    return SSDParams(
        img_shape=(512, 512),
        num_classes=21,
        no_annotation_label=21,
        feat_layers=("block4", "block7", "block8", "block9", "block10", "block11", "block12"),
        feat_shapes=((64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)),
        anchor_size_bounds=(0.10, 0.90),
        anchor_sizes=ANCHOR_PRESETS[(512, 512)][DEFAULT_ANCHOR_PRESET],
        anchor_ratios=(_RATIOS_2, _RATIOS_23, _RATIOS_23, _RATIOS_23, _RATIOS_23, _RATIOS_2,
                       _RATIOS_2),
        anchor_steps=(8, 16, 32, 64, 128, 256, 512),
        anchor_offset=0.5,
        normalizations=(20, -1, -1, -1, -1, -1, -1),
        prior_scaling=DEFAULT_PRIOR_SCALING,
        anchor_preset=DEFAULT_ANCHOR_PRESET,
        extra_blocks=SSD512_EXTRA_BLOCKS,
    )


# The extra blocks of ssd_160_vgg_lite: 10 -> 5 -> 3 -> 1 (the last as SSD300's block11).
SSD160_LITE_EXTRA_BLOCKS = (
    ExtraBlock("block8", 128, 256, 3, 2, 1),
    ExtraBlock("block9", 128, 256, 3, 2, 1),
    ExtraBlock("block10", 128, 256, 3, 1, 0),
)


def ssd_160_vgg_lite_params() -> SSDParams:
    """The light CPU net at 160x160: block4 (stride 8) and block7 (stride 16) as in SSD300,
    then 5x5, 3x3 and 1x1 maps; 2,390 anchors with the (160, 160) 'voc' preset."""
    return SSDParams(
        img_shape=(160, 160),
        num_classes=21,
        no_annotation_label=21,
        feat_layers=("block4", "block7", "block8", "block9", "block10"),
        feat_shapes=((20, 20), (10, 10), (5, 5), (3, 3), (1, 1)),
        anchor_size_bounds=(0.20, 0.90),
        anchor_sizes=ANCHOR_PRESETS[(160, 160)][DEFAULT_ANCHOR_PRESET],
        anchor_ratios=(_RATIOS_2, _RATIOS_23, _RATIOS_23, _RATIOS_2, _RATIOS_2),
        anchor_steps=(8, 16, 32, 160 / 3, 160),
        anchor_offset=0.5,
        normalizations=(-1, -1, -1, -1, -1),  # BatchNorm trunk: no L2 normalization
        prior_scaling=DEFAULT_PRIOR_SCALING,
        anchor_preset=DEFAULT_ANCHOR_PRESET,
        extra_blocks=SSD160_LITE_EXTRA_BLOCKS,
    )


def layer_anchors(params: SSDParams, layer_index: int) -> np.ndarray:
    """Anchors of one feature layer: float64 [h, w, A, 4] ``(ymin, xmin, ymax, xmax)``.

    Caffe PriorBox rule: centre ``((i + offset) * step / img_h, (j + offset) * step / img_w)``
    for row i, column j; sizes as in the module docstring, relative to the image side.
    """
    img_h, img_w = params.img_shape
    feat_h, feat_w = params.feat_shapes[layer_index]
    step = float(params.anchor_steps[layer_index])
    min_size, max_size = params.anchor_sizes[layer_index]
    ratios = np.asarray(params.anchor_ratios[layer_index], dtype=np.float64)

    cy = (np.arange(feat_h, dtype=np.float64) + params.anchor_offset) * step / img_h
    cx = (np.arange(feat_w, dtype=np.float64) + params.anchor_offset) * step / img_w
    # Box sides in pixels, Caffe order: min square, sqrt(min*max) square, then each ratio.
    side = math.sqrt(min_size * max_size)
    heights = np.concatenate([[min_size, side], min_size / np.sqrt(ratios)]) / img_h
    widths = np.concatenate([[min_size, side], min_size * np.sqrt(ratios)]) / img_w

    cy = cy[:, None, None]
    cx = cx[None, :, None]
    num = len(heights)
    ymin = np.broadcast_to(cy - heights / 2, (feat_h, feat_w, num))
    xmin = np.broadcast_to(cx - widths / 2, (feat_h, feat_w, num))
    ymax = np.broadcast_to(cy + heights / 2, (feat_h, feat_w, num))
    xmax = np.broadcast_to(cx + widths / 2, (feat_h, feat_w, num))
    return np.stack([ymin, xmin, ymax, xmax], axis=-1)


def anchors(params: SSDParams) -> np.ndarray:
    """All anchors: float32 [num_anchors, 4] ``(ymin, xmin, ymax, xmax)``, normalized, unclipped.

    Ordered (feature layer, row, column, anchor), the order of the flattened outputs.
    """
    return np.concatenate([layer_anchors(params, i).reshape(-1, 4)
                           for i in range(len(params.feat_layers))]).astype(np.float32)


def params_to_json(params: SSDParams) -> dict:
    """``params`` as a dict ready for ``json.dump`` (extra blocks become dicts)."""
    return dataclasses.asdict(params)


def params_from_json(data: dict) -> SSDParams:
    """Inverse of :func:`params_to_json`."""
    data = dict(data)
    data["extra_blocks"] = tuple(ExtraBlock(**b) for b in data.get("extra_blocks", ()))
    return SSDParams(**data)
