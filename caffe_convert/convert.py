"""Convert Wei Liu's Caffe SSD models (SSD300 / SSD512 on VGG-16) to this project's TF nets.

Weights are matched by **layer name**, never by order (the original assigned the k-th Caffe
convolution to the k-th TF one, and users who converted their own models lost 10 mAP points).
Every TF variable has exactly one Caffe source, computed from its TF-Slim name (DESIGN.md §4):

- ``conv1/conv1_1/{weights,biases}`` ... ``conv5/conv5_3/...`` <- ``conv1_1`` ... ``conv5_3``
  (blob 0 = weights, blob 1 = biases, for every convolution below too);
- ``conv6``, ``conv7`` <- ``fc6``, ``fc7`` (SSD's reduced, dilated fc layers);
- ``block{k}/conv1x1`` <- ``conv{k-2}_1``; ``block{k}/conv3x3`` (SSD512 ``block12/conv4x4``)
  <- ``conv{k-2}_2``, e.g. ``block8/conv3x3`` <- ``conv6_2``;
- ``block4_box/L2Normalization/gamma`` <- ``conv4_3_norm`` (Normalize, blob 0);
- ``<block>_box/conv_loc`` <- ``<source>_mbox_loc``; ``<block>_box/conv_cls`` <-
  ``<source>_mbox_conf``,

where ``<source>`` is the Caffe blob the head reads: ``conv4_3_norm`` (block4), ``fc7``
(block7), ``conv6_2`` ... ``conv10_2`` (block8 ... block12).

Caffe convolution weights are OIHW ``(out, in, kh, kw)``; TF's are HWIO, so they are transposed
with axes (2, 3, 1, 0). Caffe SSD reads BGR images, this project RGB (both mean-subtracted, the
means being the same three numbers in the two orders), so ``conv1_1``'s input channels are
reversed. Nothing else changes: Caffe's heads permute NCHW to NHWC before flattening, which is
the (row, column, anchor, value) layout of the TF heads, and Caffe's loc values are (x, y, w, h)
offsets like this project's.

Anchors come from the model's PriorBox layers (in the deploy.prototxt, and also stored in
every .caffemodel that Caffe saved): ``min_size``/``max_size`` (truncated to int, as Caffe's
PriorBox layer does when it builds the boxes), ``aspect_ratio`` + ``flip``, ``step``,
``offset``, ``variance``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from caffe_convert import caffe_pb
from nets import nets_factory
from nets import ssd_params as ssd_params_lib

__all__ = [
    "SUPPORTED_MODELS",
    "CaffeConversionError",
    "PriorBoxSpec",
    "caffe_source_of",
    "caffe_blob_shapes",
    "convert_weights",
    "infer_num_classes",
    "prior_box_specs",
    "anchor_params_from_prior_boxes",
    "check_conv_geometry",
]

_LOG = logging.getLogger(__name__)

# The registered networks that Caffe SSD models convert into (VGG-16 trunk).
SUPPORTED_MODELS = ("ssd_300_vgg", "ssd_512_vgg")

# Caffe blob index of each TF-Slim variable kind.
_BLOB_INDEX = {"weights": 0, "biases": 1, "gamma": 0}


class CaffeConversionError(ValueError):
    """A Caffe model that does not fit the TF net (the message names the Caffe layer(s))."""


# ----------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------

def _feature_source(block: str, normalized: bool) -> str:
    """Caffe blob feeding the multibox head of TF end point ``block`` (e.g. 'block8' -> 'conv6_2')."""
    if block == "block4":
        base = "conv4_3"
    elif block == "block7":
        base = "fc7"
    else:
        match = re.fullmatch(r"block(\d+)", block)
        if not match or int(match.group(1)) < 8:
            raise CaffeConversionError(f"no Caffe SSD layer corresponds to feature layer {block!r}")
        base = f"conv{int(match.group(1)) - 2}_2"
    # Caffe SSD names the normalized blob '<base>_norm' (only conv4_3 is normalized).
    return base + "_norm" if normalized else base


def caffe_source_of(slim_name: str, model_scope: str) -> tuple[str, int]:
    """The Caffe ``(layer name, blob index)`` that TF-Slim variable ``slim_name`` comes from.

    >>> caffe_source_of('ssd_300_vgg/block8/conv3x3/weights', 'ssd_300_vgg')
    ('conv6_2', 0)
    """
    prefix = model_scope + "/"
    if not slim_name.startswith(prefix):
        raise CaffeConversionError(f"TF variable {slim_name} is not under scope {model_scope}/")
    parts = slim_name[len(prefix):].split("/")
    kind = parts[-1]
    if kind not in _BLOB_INDEX:
        raise CaffeConversionError(f"TF variable {slim_name}: unknown kind {kind!r}")
    blob = _BLOB_INDEX[kind]
    scope = parts[:-1]
    # VGG body: conv1/conv1_1 ... conv5/conv5_3.
    if len(scope) == 2 and re.fullmatch(r"conv[1-5]", scope[0]) and \
            re.fullmatch(scope[0] + r"_\d", scope[1]):
        return scope[1], blob
    # Reduced fc6/fc7 (3x3 dilated / 1x1 convolutions in Caffe SSD).
    if scope == ["conv6"]:
        return "fc6", blob
    if scope == ["conv7"]:
        return "fc7", blob
    # Extra blocks: blockK/conv1x1 -> conv{K-2}_1, blockK/conv{n}x{n} -> conv{K-2}_2.
    if len(scope) == 2 and re.fullmatch(r"block\d+", scope[0]) and not scope[0].endswith("_box"):
        k = int(scope[0][len("block"):])
        if k >= 8:
            if scope[1] == "conv1x1":
                return f"conv{k - 2}_1", blob
            if re.fullmatch(r"conv(\d)x\1", scope[1]):
                return f"conv{k - 2}_2", blob
    # Multibox heads.
    if scope and scope[0].endswith("_box"):
        block = scope[0][: -len("_box")]
        if scope[1:] == ["L2Normalization"] and kind == "gamma":
            return _feature_source(block, normalized=True), 0
        if len(scope) == 2 and scope[1] in ("conv_loc", "conv_cls"):
            # Only block4 is normalized in SSD-VGG; its head reads conv4_3_norm.
            source = _feature_source(block, normalized=(block == "block4"))
            suffix = "_mbox_loc" if scope[1] == "conv_loc" else "_mbox_conf"
            return source + suffix, blob
    raise CaffeConversionError(f"TF variable {slim_name} has no Caffe SSD counterpart")


def _caffe_shape_of(tf_shape: Sequence[int]) -> tuple[int, ...]:
    """The Caffe blob shape holding a TF variable: HWIO -> OIHW, vectors unchanged."""
    tf_shape = tuple(int(d) for d in tf_shape)
    if len(tf_shape) == 4:
        h, w, i, o = tf_shape
        return (o, i, h, w)
    return tf_shape


def caffe_blob_shapes(variable_shapes: Mapping[str, Sequence[int]],
                      model_scope: str) -> dict[str, list[tuple[int, ...]]]:
    """Caffe layer name -> list of its blob shapes (in Caffe order) that a TF net needs.

    ``variable_shapes`` maps TF-Slim names to TF shapes. Used to build synthetic caffemodels
    (tests, benchmark) and in error messages.
    """
    layers: dict[str, dict[int, tuple[int, ...]]] = {}
    for name, shape in variable_shapes.items():
        layer, blob = caffe_source_of(name, model_scope)
        layers.setdefault(layer, {})[blob] = _caffe_shape_of(shape)
    return {layer: [blobs[i] for i in sorted(blobs)] for layer, blobs in layers.items()}


# ----------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------

def _as_vector(blob: np.ndarray, size: int) -> np.ndarray | None:
    """A bias/scale blob as a vector: shape (n,) or a legacy (1, 1, 1, n)-like shape."""
    if blob.size != size or sum(1 for d in blob.shape if d != 1) > 1:
        return None
    return blob.reshape(size)


def convert_weights(layers: Sequence[caffe_pb.CaffeLayer],
                    variable_shapes: Mapping[str, Sequence[int]],
                    model_scope: str,
                    source: str = "caffemodel") -> dict[str, np.ndarray]:
    """Map Caffe layers' blobs onto the TF variables of an SSD net, by name.

    Args:
      layers: the Caffe layers (``caffe_pb.net_layers``); only layers with blobs matter.
      variable_shapes: every TF variable of the net to fill, TF-Slim name -> TF shape
        (conv weights HWIO ``[kh, kw, in, out]``).
      model_scope: the TF-Slim scope, e.g. ``'ssd_300_vgg'``.
      source: the file name, for messages.

    Returns:
      TF-Slim name -> float32 array of the TF shape: weights OIHW -> HWIO; conv1_1's input
      channels reversed (Caffe BGR -> RGB); biases and the Normalize scale as vectors.

    Raises:
      CaffeConversionError: one message listing every problem, each naming the Caffe layer:
      a TF variable whose Caffe layer is missing, a blob of the wrong shape, a Caffe layer
      with weights that no TF variable uses, a layer name given twice.
    """
    by_name: dict[str, caffe_pb.CaffeLayer] = {}
    problems: list[str] = []
    for layer in layers:
        if not layer.blobs:
            continue
        if layer.name in by_name:
            problems.append(f"layer '{layer.name}' appears twice with weights")
            continue
        by_name[layer.name] = layer

    # Group the TF variables by Caffe layer, in the net's order (which is Caffe's order).
    wanted: dict[str, list[tuple[str, int, tuple[int, ...]]]] = {}
    for name, shape in variable_shapes.items():
        layer_name, index = caffe_source_of(name, model_scope)
        wanted.setdefault(layer_name, []).append((name, index, tuple(int(d) for d in shape)))

    values: dict[str, np.ndarray] = {}
    missing = [layer_name for layer_name in wanted if layer_name not in by_name]
    if len(missing) == 1:
        layer_name = missing[0]
        shapes = ", ".join(str(list(_caffe_shape_of(s))) for _, _, s in
                           sorted(wanted[layer_name], key=lambda v: v[1]))
        scope = wanted[layer_name][0][0].rsplit("/", 1)[0]
        problems.append(f"missing layer '{layer_name}' (blobs {shapes}) for {scope}")
    elif missing:
        problems.append(f"missing {len(missing)} layers: {', '.join(missing)}")
    for layer_name, targets in wanted.items():
        layer = by_name.get(layer_name)
        if layer is None:
            continue
        if len(layer.blobs) > len(targets):
            problems.append(f"layer '{layer_name}' has {len(layer.blobs)} blobs, but the TF net "
                            f"uses {len(targets)} ({', '.join(t[0] for t in targets)})")
        for name, index, tf_shape in sorted(targets, key=lambda v: v[1]):
            if index >= len(layer.blobs):
                problems.append(f"layer '{layer_name}' has {len(layer.blobs)} blob(s), but "
                                f"{name} needs blob {index} (a convolution without bias_term?)")
                continue
            blob = layer.blobs[index]
            expected = _caffe_shape_of(tf_shape)
            if len(tf_shape) == 4:
                if blob.shape != expected:
                    problems.append(
                        f"layer '{layer_name}' blob {index} has shape {list(blob.shape)}, but "
                        f"{name} needs {list(expected)} (OIHW; TF HWIO {list(tf_shape)})")
                    continue
                value = blob.transpose(2, 3, 1, 0)
                if layer_name == "conv1_1":
                    # Caffe SSD takes BGR input, this project RGB: reverse the input channels.
                    value = value[:, :, ::-1, :]
            else:
                value = _as_vector(blob, int(np.prod(tf_shape)))
                if value is None:
                    problems.append(f"layer '{layer_name}' blob {index} has shape "
                                    f"{list(blob.shape)}, but {name} needs {list(tf_shape)}")
                    continue
                value = value.reshape(tf_shape)
            values[name] = np.ascontiguousarray(value, dtype=np.float32)

    for layer_name, layer in by_name.items():
        if layer_name in wanted:
            continue
        shapes = ", ".join(str(list(b.shape)) for b in layer.blobs)
        problems.append(f"layer '{layer_name}' ({layer.type}, blobs {shapes}) has weights but no "
                        f"counterpart in {model_scope}")
    if problems:
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        head = f"{source}: " + _model_hint(by_name, model_scope)
        head += f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise CaffeConversionError(head + "; ".join(shown))
    return values


# Problems listed in one error message (the rest are counted).
_MAX_PROBLEMS_SHOWN = 8


def _model_hint(by_name: Mapping[str, Any], model_scope: str) -> str:
    """A hint when the caffemodel is evidently of the other SSD size."""
    if "conv10_2" in by_name and "512" not in model_scope:
        return f"looks like an SSD512 model (it has layer conv10_2), not {model_scope}; "
    if "conv10_2" not in by_name and "conv9_2" in by_name and "512" in model_scope:
        return f"looks like an SSD300 model (it has no layer conv10_2), not {model_scope}; "
    return ""


def infer_num_classes(layers: Sequence[caffe_pb.CaffeLayer],
                      num_anchors_per_location: Sequence[int],
                      feat_layers: Sequence[str],
                      normalizations: Sequence[float] | None = None) -> int | None:
    """Number of classes (incl. background) from the first head's ``_mbox_conf`` layer.

    Returns None when the caffemodel has no such layer (the weight check reports it then).
    Raises CaffeConversionError when its output count is not a multiple of its anchors.
    """
    by_name = {layer.name: layer for layer in layers if layer.blobs}
    for i, block in enumerate(feat_layers):
        normalized = bool(normalizations and normalizations[i] > 0)
        name = _feature_source(block, normalized) + "_mbox_conf"
        layer = by_name.get(name)
        if layer is None:
            continue
        outputs = int(layer.blobs[0].shape[0])
        anchors = int(num_anchors_per_location[i])
        if outputs % anchors:
            raise CaffeConversionError(
                f"layer '{name}' has {outputs} outputs, not a multiple of its {anchors} anchors "
                f"per location: the anchors (PriorBox aspect ratios) do not fit this model")
        return outputs // anchors
    return None


# ----------------------------------------------------------------------------------------
# Convolution geometry (a sanity check: the blob shapes do not show strides or padding)
# ----------------------------------------------------------------------------------------

def _expected_conv_geometry(layer_name: str, params: Any) -> tuple[int, int, int] | None:
    """(stride, pad, dilation) that the TF net uses for a Caffe layer, None if unknown."""
    if re.fullmatch(r"conv[1-5]_\d", layer_name):
        return (1, 1, 1)
    if layer_name == "fc6":
        return (1, 6, 6)   # SSD's reduced fc6: 3x3, dilation 6 (DESIGN.md §7).
    if layer_name == "fc7":
        return (1, 0, 1)
    if layer_name.endswith(("_mbox_loc", "_mbox_conf")):
        return (1, 1, 1)
    match = re.fullmatch(r"conv(\d+)_([12])", layer_name)
    if match:
        block_name = f"block{int(match.group(1)) + 2}"
        for block in getattr(params, "extra_blocks", ()):
            if block.name == block_name:
                return (1, 0, 1) if match.group(2) == "1" else (block.stride, block.padding, 1)
    return None


def check_conv_geometry(layers: Sequence[caffe_pb.CaffeLayer], params: Any,
                        source: str = "caffemodel") -> list[str]:
    """Compare each Caffe convolution's stride/pad/dilation with the TF net's.

    Returns a list of human-readable mismatches (empty when all agree or when the caffemodel
    carries no ``convolution_param``). Blob shapes cannot reveal these, and a mismatch makes
    the converted net compute something else.
    """
    issues = []
    for layer in layers:
        if layer.type != "Convolution" or not layer.param.HasField("convolution_param"):
            continue
        expected = _expected_conv_geometry(layer.name, params)
        if expected is None:
            continue
        conv = layer.param.convolution_param
        stride = conv.stride_h if conv.HasField("stride_h") else (conv.stride[0] if conv.stride else 1)
        pad = conv.pad_h if conv.HasField("pad_h") else (conv.pad[0] if conv.pad else 0)
        dilation = conv.dilation[0] if conv.dilation else 1
        if (stride, pad, dilation) != expected:
            issues.append(f"{source}: layer '{layer.name}' has stride {stride}, pad {pad}, "
                          f"dilation {dilation}; the TF net uses {expected[0]}, {expected[1]}, "
                          f"{expected[2]}")
    return issues


# ----------------------------------------------------------------------------------------
# Anchors from PriorBox layers
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PriorBoxSpec:
    """The parameters of one Caffe PriorBox layer, in pixels of the network input.

    Attributes:
      name: the layer name, e.g. 'conv4_3_norm_mbox_priorbox'.
      source: its first bottom, the feature blob, e.g. 'conv4_3_norm'.
      min_sizes, max_sizes: as written in the file (floats).
      aspect_ratios: the ratios w/h after Caffe's expansion (duplicates and 1 dropped,
        each r followed by 1/r when flip is true).
      flip, clip: Caffe's flags.
      variance: the 4 prior variances (x, y, w, h).
      img_size: (h, w) when the layer states it, else None (Caffe then uses the input's).
      step: (h, w) when the layer states it, else None (Caffe then uses img / feature size).
      offset: the centre offset in cells.
    """

    name: str
    source: str
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    flip: bool
    clip: bool
    variance: tuple[float, ...]
    img_size: tuple[int, int] | None
    step: tuple[float, float] | None
    offset: float


def _expand_aspect_ratios(ratios: Sequence[float], flip: bool) -> tuple[float, ...]:
    """Caffe PriorBoxLayer::LayerSetUp: start from {1}, skip near-duplicates, add 1/r on flip.

    Returns the list without the leading 1 (the squares are handled separately).
    """
    seen = [1.0]
    out: list[float] = []
    for r in ratios:
        r = float(r)
        if any(abs(r - s) < 1e-6 for s in seen):
            continue
        seen.append(r)
        out.append(r)
        if flip:
            seen.append(1.0 / r)
            out.append(1.0 / r)
    return tuple(out)


def _f32(value: float) -> float:
    """A float32 field as the number written in the file (0.1, not 0.10000000149)."""
    return float(str(np.float32(value)))


def prior_box_specs(net_param: Any, source: str = "net") -> list[PriorBoxSpec]:
    """The PriorBox layers of a NetParameter (a deploy.prototxt or a .caffemodel), in order."""
    specs = []
    for layer in caffe_pb.net_layers(net_param, source=source, with_blobs=False):
        if layer.type != "PriorBox":
            continue
        p = layer.param.prior_box_param
        if not layer.bottom:
            raise CaffeConversionError(f"{source}: PriorBox layer '{layer.name}' has no bottom")
        img_size = None
        if p.HasField("img_size"):
            img_size = (int(p.img_size), int(p.img_size))
        elif p.HasField("img_h") or p.HasField("img_w"):
            img_size = (int(p.img_h), int(p.img_w))
        step = None
        if p.HasField("step"):
            step = (_f32(p.step), _f32(p.step))
        elif p.HasField("step_h") or p.HasField("step_w"):
            step = (_f32(p.step_h), _f32(p.step_w))
        specs.append(PriorBoxSpec(
            name=layer.name, source=layer.bottom[0],
            min_sizes=tuple(_f32(v) for v in p.min_size),
            max_sizes=tuple(_f32(v) for v in p.max_size),
            aspect_ratios=_expand_aspect_ratios([_f32(v) for v in p.aspect_ratio], p.flip),
            flip=bool(p.flip), clip=bool(p.clip),
            # Caffe's default when a PriorBox gives no variance: a single 0.1.
            variance=tuple(_f32(v) for v in p.variance) or (0.1,),
            img_size=img_size, step=step, offset=_f32(p.offset)))
    return specs


def _clean_number(value: float) -> float | int:
    """An int when the float is whole (steps 8, 16 ... read back as written)."""
    return int(value) if float(value).is_integer() else float(value)


def anchor_params_from_prior_boxes(params: Any, specs: Sequence[PriorBoxSpec],
                                   source: str = "prototxt") -> Any:
    """A copy of ``params`` (an ``SSDParams``) whose anchors are those of the PriorBox layers.

    Each feature layer must have exactly one PriorBox layer (found by its bottom: conv4_3_norm,
    fc7, conv6_2 ...). Sizes are truncated to int as Caffe's PriorBox does (so SSD512's
    35.84 gives 35), ``anchor_preset`` names the matching preset of nets/ssd_params.py (or
    'custom'), and ``prior_scaling`` takes the PriorBox variances.

    Raises CaffeConversionError naming the layer for what this project's anchors cannot
    express (several min sizes, no max size, different steps in y and x, offsets or
    variances that differ between layers, an image size other than the model's).
    """
    by_source = {}
    for spec in specs:
        if spec.source in by_source:
            raise CaffeConversionError(f"{source}: PriorBox layers '{by_source[spec.source].name}' "
                                       f"and '{spec.name}' both read '{spec.source}'")
        by_source[spec.source] = spec
    sizes, ratios, steps, offsets, variances = [], [], [], set(), set()
    used = set()
    img_h, img_w = params.img_shape
    for i, block in enumerate(params.feat_layers):
        src = _feature_source(block, normalized=params.normalizations[i] > 0)
        spec = by_source.get(src)
        if spec is None:
            raise CaffeConversionError(f"{source}: no PriorBox layer reads '{src}' (feature layer "
                                       f"{block}); found: {', '.join(by_source) or 'none'}")
        used.add(src)
        where = f"{source}: PriorBox layer '{spec.name}'"
        if len(spec.min_sizes) != 1 or len(spec.max_sizes) != 1:
            raise CaffeConversionError(
                f"{where} has {len(spec.min_sizes)} min_size and {len(spec.max_sizes)} max_size "
                f"values; SSD-VGG nets need exactly one of each")
        if spec.img_size is not None and spec.img_size != (img_h, img_w):
            raise CaffeConversionError(f"{where} is for {spec.img_size[0]}x{spec.img_size[1]} "
                                       f"images, the model for {img_h}x{img_w}")
        if spec.step is not None:
            if spec.step[0] != spec.step[1]:
                raise CaffeConversionError(f"{where} has step_h {spec.step[0]} != step_w "
                                           f"{spec.step[1]}; not supported")
            step = spec.step[0]
        else:
            # Caffe: step = image size / feature map size when the layer gives none.
            feat_h, feat_w = params.feat_shapes[i]
            if img_h / feat_h != img_w / feat_w:
                raise CaffeConversionError(f"{where} has no step and a non-square grid")
            step = img_h / feat_h
        if spec.clip:
            _LOG.warning("%s clips its priors to the image; this project's anchors are never "
                         "clipped, so boxes near the borders will differ slightly", where)
        # Caffe's PriorBoxLayer::Forward_cpu stores min_size/max_size in ints before building
        # the boxes, so the published models were trained and tested with truncated sizes.
        sizes.append((float(int(spec.min_sizes[0])), float(int(spec.max_sizes[0]))))
        ratios.append(spec.aspect_ratios)
        steps.append(_clean_number(step))
        offsets.add(spec.offset)
        variances.add(spec.variance)
    extra = sorted(set(by_source) - used)
    if extra:
        raise CaffeConversionError(f"{source}: PriorBox layers on {', '.join(extra)} have no "
                                   f"feature layer in the model ({', '.join(params.feat_layers)})")
    if len(offsets) != 1:
        raise CaffeConversionError(f"{source}: PriorBox offsets differ between layers: "
                                   f"{sorted(offsets)}; one offset is supported")
    if len(variances) != 1:
        raise CaffeConversionError(f"{source}: PriorBox variances differ between layers")
    variance = next(iter(variances))
    if len(variance) == 1:
        variance = variance * 4
    if len(variance) != 4:
        raise CaffeConversionError(f"{source}: PriorBox variance has {len(variance)} values, "
                                   f"expected 1 or 4")
    sizes_t = tuple(sizes)
    preset = ssd_params_lib.CUSTOM_PRESET
    table = ssd_params_lib.ANCHOR_PRESETS.get(tuple(params.img_shape), {})
    # Prefer the plain preset name when the truncated sizes equal it (SSD300 sizes are whole).
    for name in sorted(table, key=lambda n: (n.endswith("_caffe"), n)):
        if tuple(tuple(float(v) for v in s) for s in table[name]) == sizes_t:
            preset = name
            break
    return dataclasses.replace(
        params, anchor_sizes=sizes_t, anchor_ratios=tuple(ratios), anchor_steps=tuple(steps),
        anchor_offset=float(next(iter(offsets))),
        prior_scaling=tuple(float(v) for v in variance), anchor_preset=preset)


# ----------------------------------------------------------------------------------------
# The whole conversion
# ----------------------------------------------------------------------------------------

def check_normalize_layers(layers: Sequence[caffe_pb.CaffeLayer], source: str) -> list[str]:
    """Normalize layers must normalize across channels at each position (across_spatial:
    false), as the TF ``L2Normalization`` does; returns the mismatches."""
    issues = []
    for layer in layers:
        if layer.type == "Normalize" and layer.param.HasField("norm_param"):
            if layer.param.norm_param.across_spatial:
                issues.append(f"{source}: Normalize layer '{layer.name}' has across_spatial: "
                              f"true; the TF net normalizes each position across channels")
    return issues


def default_output_path(caffemodel_path: str | os.PathLike) -> str:
    """``X.caffemodel`` -> ``X.ckpt`` (same directory)."""
    root, ext = os.path.splitext(os.fspath(caffemodel_path))
    return (root if ext == ".caffemodel" else os.fspath(caffemodel_path)) + ".ckpt"


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert_caffemodel` did.

    Attributes:
      output_path: the checkpoint prefix written (``X.ckpt``; files ``X.ckpt.index``,
        ``X.ckpt.data-00000-of-00001`` and the metadata sidecar ``X.ckpt.ssd.json``).
      params: the SSDParams the net was built with (anchors from the PriorBox layers).
      anchor_source: where the anchors came from (a prototxt, the caffemodel, or defaults).
      num_variables: TF variables written; num_layers: Caffe layers with weights used.
      warnings: geometry / normalization mismatches found (also logged).
    """

    output_path: str
    params: Any
    anchor_source: str
    num_variables: int
    num_layers: int
    warnings: list[str]


def build_params(model_name: str, caffe_net: Any, layers: Sequence[caffe_pb.CaffeLayer],
                 num_classes: int | None = None, prototxt_net: Any = None,
                 caffemodel_path: str = "caffemodel",
                 prototxt_path: str = "prototxt") -> tuple[Any, str]:
    """The SSDParams of a Caffe SSD model: the registry defaults of ``model_name`` with the
    anchors of the PriorBox layers and the class count of the ``_mbox_conf`` layers.

    The PriorBox layers are taken from ``prototxt_net`` when given, else from the caffemodel
    (Caffe stores every layer's parameters in the .caffemodel), else the defaults stay (and a
    warning is logged). Returns ``(params, anchor_source)``.

    Raises:
      CaffeConversionError: the prototxt is for another input size or has no PriorBox layer,
        or ``num_classes`` disagrees with the caffemodel.
    """
    params = nets_factory.get_network(model_name).default_params
    img_h, img_w = params.img_shape
    specs: list[PriorBoxSpec] = []
    anchor_source = ""
    if prototxt_net is not None:
        shape = caffe_pb.net_input_shape(prototxt_net)
        if shape is not None and len(shape) == 4 and tuple(shape[2:]) != (img_h, img_w):
            raise CaffeConversionError(
                f"{prototxt_path}: input is {shape[2]}x{shape[3]}, but {model_name} takes "
                f"{img_h}x{img_w}")
        specs = prior_box_specs(prototxt_net, source=prototxt_path)
        if not specs:
            raise CaffeConversionError(f"{prototxt_path}: no PriorBox layer; give the model's "
                                       f"deploy.prototxt")
        anchor_source = prototxt_path
        base = params
        params = anchor_params_from_prior_boxes(base, specs, source=prototxt_path)
        stored = prior_box_specs(caffe_net, source=caffemodel_path)
        if stored:
            try:
                own = anchor_params_from_prior_boxes(base, stored, source=caffemodel_path)
            except CaffeConversionError:
                own = None
            fields = ("anchor_sizes", "anchor_ratios", "anchor_steps", "anchor_offset",
                      "prior_scaling")
            if own is None or any(getattr(own, f) != getattr(params, f) for f in fields):
                _LOG.warning("%s: its PriorBox layers differ from those stored in %s; using the "
                             "prototxt's (is it the deploy.prototxt of this model?)",
                             prototxt_path, caffemodel_path)
    else:
        specs = prior_box_specs(caffe_net, source=caffemodel_path)
        if specs:
            anchor_source = f"{caffemodel_path} (its PriorBox layers)"
            params = anchor_params_from_prior_boxes(params, specs, source=caffemodel_path)
        else:
            # Caffe truncates PriorBox sizes to ints: use the '_caffe' twin of the default.
            table = ssd_params_lib.ANCHOR_PRESETS.get(tuple(params.img_shape), {})
            caffe_preset = params.anchor_preset + "_caffe"
            if caffe_preset in table and table[caffe_preset] != params.anchor_sizes:
                params = params.with_anchor_preset(caffe_preset)
            anchor_source = f"the {model_name} defaults (no PriorBox layer found)"
            _LOG.warning("%s has no PriorBox layers and no prototxt was given: using the %s "
                         "anchors (preset %r); give the model's deploy.prototxt if they differ",
                         caffemodel_path, model_name, params.anchor_preset)

    inferred = infer_num_classes(layers, params.num_anchors_per_location, params.feat_layers,
                                 params.normalizations)
    if num_classes is not None and inferred is not None and num_classes != inferred:
        first = _feature_source(params.feat_layers[0], params.normalizations[0] > 0)
        raise CaffeConversionError(
            f"{caffemodel_path}: num_classes is {num_classes}, but layer '{first}_mbox_conf' "
            f"has {inferred * params.num_anchors_per_location[0]} outputs = "
            f"{params.num_anchors_per_location[0]} anchors x {inferred} classes")
    if num_classes is None:
        num_classes = inferred if inferred is not None else params.num_classes
    params = dataclasses.replace(params, num_classes=int(num_classes),
                                 no_annotation_label=int(num_classes))
    return params, anchor_source


def convert_caffemodel(model_name: str, caffemodel_path: str | os.PathLike,
                       output_path: str | os.PathLike | None = None,
                       num_classes: int | None = None,
                       prototxt_path: str | os.PathLike | None = None) -> tuple[Any, ConversionReport]:
    """Convert a Caffe SSD .caffemodel into this project's TF1-format checkpoint.

    Builds the ``model_name`` net with the model's anchors and class count
    (:func:`build_params`), fills every variable from its Caffe layer
    (:func:`convert_weights`) and writes it with ``net.save_checkpoint`` (TF-Slim names and
    the ``<prefix>.ssd.json`` sidecar that records the anchors, so eval and the notebook
    rebuild the same net).

    Args:
      model_name: 'ssd_300_vgg' or 'ssd_512_vgg'.
      caffemodel_path: the binary .caffemodel.
      output_path: checkpoint prefix; ``X.ckpt`` next to ``X.caffemodel`` when None.
      num_classes: classes incl. background; inferred from the ``_mbox_conf`` layers when None.
      prototxt_path: the model's deploy.prototxt, for the PriorBox parameters (optional).

    Returns:
      ``(net, report)``: the converted net (ready to run) and a :class:`ConversionReport`.

    Raises:
      caffe_pb.CaffeFormatError: an unreadable file. CaffeConversionError: a model that does
      not fit (messages name the file and the Caffe layer).
    """
    caffemodel_path = os.fspath(caffemodel_path)
    output_path = os.fspath(output_path) if output_path else default_output_path(caffemodel_path)
    caffe_net, layers = caffe_pb.read_caffemodel(caffemodel_path)
    prototxt_net = None
    if prototxt_path is not None:
        prototxt_path = os.fspath(prototxt_path)
        prototxt_net = caffe_pb.parse_prototxt(prototxt_path)
    params, anchor_source = build_params(
        model_name, caffe_net, layers, num_classes=num_classes, prototxt_net=prototxt_net,
        caffemodel_path=caffemodel_path, prototxt_path=prototxt_path or "prototxt")

    warnings = check_conv_geometry(layers, params, source=caffemodel_path)
    if prototxt_net is not None:
        proto_layers = caffe_pb.net_layers(prototxt_net, source=prototxt_path, with_blobs=False)
        warnings += check_conv_geometry(proto_layers, params, source=prototxt_path)
        warnings += check_normalize_layers(proto_layers, prototxt_path)
    warnings += check_normalize_layers(layers, caffemodel_path)
    for message in warnings:
        _LOG.warning("%s: the converted net will compute something else", message)

    net = nets_factory.get_network(model_name)(params)
    variables = net.variables_by_checkpoint_name()
    values = convert_weights(layers, {name: tuple(v.shape) for name, v in variables.items()},
                             model_scope=net.model_name, source=caffemodel_path)
    for name, var in variables.items():
        var.assign(values[name])
    out_dir = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(out_dir, exist_ok=True)
    written = net.save_checkpoint(output_path)
    num_layers = len({caffe_source_of(name, net.model_name)[0] for name in values})
    report = ConversionReport(output_path=written, params=params, anchor_source=anchor_source,
                              num_variables=len(values), num_layers=num_layers,
                              warnings=warnings)
    return net, report


# ----------------------------------------------------------------------------------------
# Verification against outputs saved from Caffe
# ----------------------------------------------------------------------------------------

def caffe_input_to_tf(data: np.ndarray) -> np.ndarray:
    """Caffe's input blob [N, 3, H, W] (BGR, mean-subtracted) -> this project's [N, H, W, 3] RGB."""
    data = np.asarray(data, dtype=np.float32)
    return np.ascontiguousarray(data.transpose(0, 2, 3, 1)[..., ::-1])


def verify_against_caffe(net: Any, npz_path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Run ``net`` on the input saved from Caffe and compare with Caffe's saved outputs.

    The .npz holds Caffe blobs by their SSD deploy.prototxt names:
      ``data`` (required): the input blob as Caffe ran it, [N, 3, H, W], BGR, mean-subtracted;
      ``mbox_loc``: [N, num_anchors * 4], the concatenated loc outputs;
      ``mbox_conf``: [N, num_anchors * num_classes], the concatenated conf logits;
      ``mbox_conf_flatten``: the softmax probabilities (same shape), optional;
      ``mbox_priorbox``: [1, 2, num_anchors * 4], priors (xmin, ymin, xmax, ymax) then
      variances, optional.
    At least one of the output blobs must be present.

    Returns:
      blob name -> (largest |TF - Caffe|, largest |Caffe|) for each blob compared.

    Raises:
      CaffeConversionError: a missing ``data`` blob, no output blob, or a shape that does not
      fit the net (the message names the blob).
    """
    npz_path = os.fspath(npz_path)
    try:
        ref = dict(np.load(npz_path))
    except (OSError, ValueError) as e:
        raise CaffeConversionError(f"{npz_path}: cannot read as .npz: {e}") from None
    if "data" not in ref:
        raise CaffeConversionError(f"{npz_path}: no 'data' array (Caffe's input blob, "
                                   f"[N, 3, H, W] BGR mean-subtracted)")
    data = ref["data"]
    img_h, img_w = net.params.img_shape
    if data.ndim != 4 or data.shape[1] != 3 or tuple(data.shape[2:]) != (img_h, img_w):
        raise CaffeConversionError(f"{npz_path}: 'data' has shape {list(data.shape)}, expected "
                                   f"[N, 3, {img_h}, {img_w}]")
    compared = [k for k in ("mbox_loc", "mbox_conf", "mbox_conf_flatten", "mbox_priorbox")
                if k in ref]
    if not compared:
        raise CaffeConversionError(f"{npz_path}: none of mbox_loc, mbox_conf, "
                                   f"mbox_conf_flatten, mbox_priorbox to compare with")
    n = data.shape[0]
    flat = net.flat_outputs(net.inference(caffe_input_to_tf(data)))
    ours = {
        "mbox_loc": np.asarray(flat["localisations"]).reshape(n, -1),
        "mbox_conf": np.asarray(flat["logits"]).reshape(n, -1),
        "mbox_conf_flatten": np.asarray(flat["predictions"]).reshape(n, -1),
    }
    anchors = np.asarray(net.anchors())
    # Caffe priors are (xmin, ymin, xmax, ymax); ours (ymin, xmin, ymax, xmax).
    ours["mbox_priorbox"] = np.stack([
        anchors[:, [1, 0, 3, 2]].reshape(-1),
        np.tile(np.asarray(net.params.prior_scaling, np.float32), len(anchors))])[None]
    result = {}
    for key in compared:
        theirs = np.asarray(ref[key], dtype=np.float32)
        mine = ours[key]
        if key != "mbox_priorbox":
            theirs = theirs.reshape(theirs.shape[0], -1) if theirs.ndim else theirs
        if theirs.shape != mine.shape:
            raise CaffeConversionError(f"{npz_path}: '{key}' has shape {list(theirs.shape)}, the "
                                       f"converted net gives {list(mine.shape)}")
        result[key] = (float(np.max(np.abs(mine - theirs))), float(np.max(np.abs(theirs))))
    return result
