"""SSDLite on a MobileNetV2 trunk: the light SSD variant that trains on a CPU.

Architecture (SSDLite, Sandler et al. 2018, "MobileNetV2", section 6.2; the TF Object Detection
API's ``ssdlite_mobilenet_v2``):
  * trunk: ``keras.applications.MobileNetV2`` (``include_top=False``, ``weights=None``; ImageNet
    weights only when a file is given); feature maps are the expansion output of block 13
    (stride 16, 576 x alpha channels; TF-Slim's ``expanded_conv_13/expansion_output``) and the
    final 1x1 conv ``Conv_1`` (stride 32, 1280 channels);
  * extra blocks (``SSDParams.extra_blocks``): 1x1 conv -> explicit zero padding + 3x3 depthwise
    conv with the block's stride (VALID) -> 1x1 conv, each followed by BatchNorm + ReLU6;
  * one SSDLite box predictor per feature map and per output (``conv_loc``, ``conv_cls``):
    3x3 depthwise conv + BatchNorm + ReLU6, then a 1x1 conv with bias and no activation.

Input: the same as the VGG nets (DESIGN.md §5): RGB float minus the means (123, 117, 104).
The net adds the means back and rescales to [-1, 1] itself (what MobileNetV2's ImageNet weights
expect), so every preprocessing chain and script works unchanged.

Outputs, anchors, post-processing and checkpoint I/O are those of every SSD net (the shared base
:class:`nets.ssd_base.SSDNet`; the VGG nets are its other family). Checkpoint names follow TF-Slim's ``mobilenet_v2``
(``Conv``, ``expanded_conv_<k>/{expand,depthwise,project}``, ``.../BatchNorm/gamma``,
``.../depthwise_weights``) under the model scope, e.g.
``ssd_300_mobilenet_v2/expanded_conv_1/expand/weights``; so TF-Slim's ImageNet
``mobilenet_v2_1.0_224.ckpt`` loads into the trunk with ``model_scope='MobilenetV2'`` and
``ignore_missing_vars=True``, and a Keras ImageNet weights file (``.h5``) loads through
:meth:`SSDMobileNetV2.load_imagenet_weights` or ``load_checkpoint(path_to_h5)``.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
from typing import Any, ClassVar, Optional, Sequence

import keras

from nets import ssd_params
from nets.ssd_base import BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, SSDGraph, SSDNet, feature_map
from nets.ssd_params import ExtraBlock, SSDParams
from tf_extended.images import RGB_MEANS

# Keras MobileNetV2 weight attribute -> TF-Slim variable name, per layer type.
_BN_SUFFIX = ("gamma", "beta", "moving_mean", "moving_variance")

# SSDLite extra blocks of the TF Object Detection API (ssdlite_mobilenet_v2: depths 512, 256,
# 256, 128, each with a 1x1 of half that depth), 300 input: 10 -> 5 -> 3 -> 2 -> 1.
MOBILENET_EXTRA_BLOCKS = (
    ExtraBlock("extra1", 256, 512, 3, 2, 1),
    ExtraBlock("extra2", 128, 256, 3, 2, 1),
    ExtraBlock("extra3", 128, 256, 3, 2, 1),
    ExtraBlock("extra4", 64, 128, 3, 2, 1),
)
# Feature maps taken from the trunk: expansion output of block 13 (stride 16) and Conv_1 (stride 32).
TRUNK_FEATURES = {"expanded_conv_13_expansion": "block_13_expand_relu", "Conv_1": "out_relu"}

_RATIOS_2 = (2.0, 0.5)
_RATIOS_23 = (2.0, 0.5, 3.0, 1.0 / 3.0)


def ssd_300_mobilenet_v2_params() -> SSDParams:
    """SSDLite-MobileNetV2 at 300x300: feature maps 19, 10, 5, 3, 2, 1 (2,268 anchors), the
    anchor sizes of SSD300's 'voc' preset, steps matching the feature strides."""
    return SSDParams(
        img_shape=(300, 300),
        num_classes=21,
        no_annotation_label=21,
        feat_layers=tuple(TRUNK_FEATURES) + tuple(b.name for b in MOBILENET_EXTRA_BLOCKS),
        feat_shapes=((19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)),
        anchor_size_bounds=(0.10, 0.90),
        anchor_sizes=ssd_params.ANCHOR_PRESETS[(300, 300)]["voc"],
        anchor_ratios=(_RATIOS_2, _RATIOS_23, _RATIOS_23, _RATIOS_23, _RATIOS_2, _RATIOS_2),
        anchor_steps=(16, 32, 64, 100, 150, 300),
        anchor_offset=0.5,
        normalizations=(-1, -1, -1, -1, -1, -1),  # BatchNorm everywhere: no L2 normalization
        prior_scaling=ssd_params.DEFAULT_PRIOR_SCALING,
        anchor_preset="voc",
        extra_blocks=MOBILENET_EXTRA_BLOCKS,
    )


def ssd_160_mobilenet_v2_params() -> SSDParams:
    """The demo size, 160x160: feature maps 10, 5, 3, 2, 1 (three extra blocks), 624 anchors,
    'voc' preset sizes ((16, 32), (32, 68.8), (68.8, 105.6), (105.6, 142.4), (142.4, 179.2))."""
    extras = MOBILENET_EXTRA_BLOCKS[:3]
    return SSDParams(
        img_shape=(160, 160),
        num_classes=21,
        no_annotation_label=21,
        feat_layers=tuple(TRUNK_FEATURES) + tuple(b.name for b in extras),
        feat_shapes=((10, 10), (5, 5), (3, 3), (2, 2), (1, 1)),
        anchor_size_bounds=(0.20, 0.90),
        anchor_sizes=ssd_params.ANCHOR_PRESETS[(160, 160)]["voc"],
        anchor_ratios=(_RATIOS_2, _RATIOS_23, _RATIOS_23, _RATIOS_2, _RATIOS_2),
        anchor_steps=(16, 32, 160 / 3, 80, 160),
        anchor_offset=0.5,
        normalizations=(-1, -1, -1, -1, -1),
        prior_scaling=ssd_params.DEFAULT_PRIOR_SCALING,
        anchor_preset="voc",
        extra_blocks=extras,
    )


def _keras_to_slim_scope(layer_name: str) -> Optional[str]:
    """TF-Slim mobilenet_v2 scope of a keras.applications MobileNetV2 layer, or None.

    ``Conv1`` -> ``Conv``; ``bn_Conv1`` -> ``Conv/BatchNorm``; ``expanded_conv_depthwise`` ->
    ``expanded_conv/depthwise``; ``block_3_expand_BN`` -> ``expanded_conv_3/expand/BatchNorm``;
    ``Conv_1_bn`` -> ``Conv_1/BatchNorm``.
    """
    fixed = {"Conv1": "Conv", "bn_Conv1": "Conv/BatchNorm", "Conv_1": "Conv_1",
             "Conv_1_bn": "Conv_1/BatchNorm"}
    if layer_name in fixed:
        return fixed[layer_name]
    match = re.fullmatch(r"(?:expanded_conv|block_(\d+))_(expand|depthwise|project)(_BN)?", layer_name)
    if match is None:
        return None
    block = "expanded_conv" if match.group(1) is None else f"expanded_conv_{match.group(1)}"
    return f"{block}/{match.group(2)}" + ("/BatchNorm" if match.group(3) else "")


@contextlib.contextmanager
def _global_dtype_policy(dtype_policy: Any):
    """keras.applications builds its layers with the global policy: set it for the trunk only."""
    if dtype_policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _build_graph(params: SSDParams, alpha: float, dtype_policy: Any
                 ) -> tuple[SSDGraph, keras.Model]:
    """Build the SSDLite-MobileNetV2 graph for ``params``.

    Returns:
      (the graph: heads, end points {feature layer name: activation} and
       {keras layer name: TF-Slim scope without the model scope};
       the trunk, a keras.applications MobileNetV2 sharing the graph's layers).
    """
    scopes: dict[str, str] = collections.OrderedDict()
    img_h, img_w = params.img_shape
    images = keras.Input(shape=(img_h, img_w, 3), name="images", dtype="float32")
    # Mean-subtracted RGB (DESIGN.md §5) -> MobileNetV2's [-1, 1]: (x + mean) / 127.5 - 1.
    offsets = [m / 127.5 - 1.0 for m in RGB_MEANS]
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=offsets, name="to_unit_range",
                                    dtype=dtype_policy)(images)
    with _global_dtype_policy(dtype_policy):
        trunk = keras.applications.MobileNetV2(input_tensor=scaled, alpha=alpha, include_top=False,
                                               weights=None)
    for layer in trunk.layers:
        scope = _keras_to_slim_scope(layer.name)
        if scope is not None:
            scopes[layer.name] = scope
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM

    def batch_norm(x, name, scope):
        scopes[name] = scope
        return keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM,
                                               epsilon=BATCH_NORM_EPSILON, name=name,
                                               dtype=dtype_policy)(x)

    def relu6(x, name):
        return keras.layers.ReLU(6.0, name=name, dtype=dtype_policy)(x)

    def pointwise(x, filters, name, scope, use_bias=False):
        scopes[name] = scope
        return keras.layers.Conv2D(filters, 1, use_bias=use_bias, name=name,
                                   dtype=dtype_policy)(x)

    def depthwise(x, name, scope, strides=1, padding=1):
        if padding:
            x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad", dtype=dtype_policy)(x)
        scopes[name] = scope
        x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="valid", use_bias=False,
                                         name=name, dtype=dtype_policy)(x)
        return relu6(batch_norm(x, f"{name}_bn", f"{scope}/BatchNorm"), f"{name}_relu")

    end_points: dict[str, Any] = {name: trunk.get_layer(layer).output
                                  for name, layer in TRUNK_FEATURES.items()}
    x = end_points["Conv_1"]
    for block in params.extra_blocks:
        b = block.name
        x = relu6(batch_norm(pointwise(x, block.num_1x1, f"{b}_conv1x1", f"{b}/conv1x1"),
                             f"{b}_conv1x1_bn", f"{b}/conv1x1/BatchNorm"), f"{b}_conv1x1_relu")
        if block.kernel != 3:
            raise ValueError(f"{b}: SSDLite extra blocks use 3x3 depthwise convs, got kernel "
                             f"{block.kernel}.")
        x = depthwise(x, f"{b}_depthwise", f"{b}/depthwise", strides=block.stride,
                      padding=block.padding)
        x = relu6(batch_norm(pointwise(x, block.num_outputs, f"{b}_project", f"{b}/project"),
                             f"{b}_project_bn", f"{b}/project/BatchNorm"), f"{b}_project_relu")
        end_points[b] = x

    logits, localisations = [], []
    for i, layer in enumerate(params.feat_layers):
        x = feature_map(end_points, params, i)
        if params.normalizations[i] > 0:
            raise ValueError(f"{layer}: SSDLite nets use BatchNorm, not L2 normalization "
                             f"(normalizations[{i}] = {params.normalizations[i]}).")
        h, w = params.feat_shapes[i]
        num_anchors = params.num_anchors_per_location[i]
        box = f"{layer}_box"
        outputs = {}
        for kind, depth in (("loc", num_anchors * 4), ("cls", num_anchors * params.num_classes)):
            scope = f"{box}/conv_{kind}"
            y = depthwise(x, f"{box}_{kind}_depthwise", f"{scope}/depthwise")
            outputs[kind] = pointwise(y, depth, f"{box}_conv_{kind}", scope, use_bias=True)
        # Channels are anchor-major, as in the VGG heads (Caffe's NHWC flattening).
        localisations.append(keras.layers.Reshape((h, w, num_anchors, 4), name=f"{box}_loc_reshape",
                                                  dtype=dtype_policy)(outputs["loc"]))
        logits.append(keras.layers.Reshape((h, w, num_anchors, params.num_classes),
                                           name=f"{box}_cls_reshape", dtype=dtype_policy)(outputs["cls"]))

    heads = keras.Model(images, {"logits": logits, "localisations": localisations}, name="ssd_graph")
    end_points_model = keras.Model(images, end_points, name="ssd_end_points")
    return SSDGraph(heads, end_points_model, scopes), trunk


class SSDMobileNetV2(SSDNet):
    """SSDLite on MobileNetV2; subclasses set ``model_name``, ``default_params`` and ``alpha``.

    The API is :class:`nets.ssd_base.SSDNet`'s (DESIGN.md §3): ``net(images)``, ``anchors()``,
    ``flat_outputs()``, ``detected_bboxes()``, ``load_checkpoint()`` (which also takes a Keras
    ImageNet ``.h5`` for the trunk), ``save_checkpoint()``, ``checkpoint_name_map()``.
    """

    model_name: ClassVar[str] = "ssd_mobilenet_v2"
    default_params: ClassVar[SSDParams]
    alpha: ClassVar[float] = 1.0  # MobileNetV2 width multiplier
    # TF-Slim scopes of the trunk (what an ImageNet checkpoint can initialise).
    trunk_scopes: ClassVar[tuple[str, ...]] = tuple(
        ["Conv", "expanded_conv", "Conv_1"] + [f"expanded_conv_{k}" for k in range(1, 17)])

    def __init__(self, params: Optional[SSDParams] = None, *, dtype_policy: Any = None,
                 name: Optional[str] = None, imagenet_weights: Optional[str] = None):
        """Build the net.

        Args:
          params, dtype_policy, name: see :class:`nets.ssd_base.SSDNet`.
          imagenet_weights: optional path of a Keras MobileNetV2 ImageNet weights file
            (``include_top=False``, same ``alpha``) loaded into the trunk; nothing is ever
            downloaded.
        """
        super().__init__(params, dtype_policy=dtype_policy, name=name)
        if imagenet_weights:
            self.load_imagenet_weights(imagenet_weights)

    def _build(self, params: SSDParams, dtype_policy: Any) -> SSDGraph:
        graph, self._trunk = _build_graph(params, self.alpha, dtype_policy)
        return graph

    def variables_by_checkpoint_name(self) -> "collections.OrderedDict[str, keras.Variable]":
        """TF-Slim name -> Keras variable, for every weight (BatchNorm statistics included)."""
        result = collections.OrderedDict()
        for layer_name, scope in self._scopes.items():
            layer = self._graph.get_layer(layer_name)
            prefix = f"{self.model_name}/{scope}"
            if isinstance(layer, keras.layers.BatchNormalization):
                for attr in _BN_SUFFIX:
                    result[f"{prefix}/{attr}"] = getattr(layer, attr)
            elif isinstance(layer, keras.layers.DepthwiseConv2D):
                result[f"{prefix}/depthwise_weights"] = layer.kernel
            else:
                result[f"{prefix}/weights"] = layer.kernel
                if layer.bias is not None:
                    result[f"{prefix}/biases"] = layer.bias
        if len(result) != len(self._graph.weights):
            raise AssertionError("checkpoint name map does not cover every weight of the net")
        return result

    def load_imagenet_weights(self, path: str) -> int:
        """Load a Keras MobileNetV2 ImageNet weights file (no top, same alpha) into the trunk.

        The file is read by a stand-alone ``keras.applications.MobileNetV2`` of the same
        width and copied over layer by layer by name. Returns the number of variables set.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: MobileNetV2 weights file not found.")
        img_h, img_w = self._params.img_shape
        try:
            reference = keras.applications.MobileNetV2(input_shape=(img_h, img_w, 3), alpha=self.alpha,
                                                       include_top=False, weights=path)
        except (ValueError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: not a Keras MobileNetV2 (alpha={self.alpha}, include_top=False) "
                             f"weights file: {first}") from None
        count = 0
        for layer in reference.layers:
            if not layer.weights:
                continue
            target = self._trunk.get_layer(layer.name)
            for src, dst in zip(layer.weights, target.weights):
                dst.assign(src)
                count += 1
        return count

    def load_checkpoint(self, path: str, model_scope: Optional[str] = None,
                        exclude_scopes: Sequence[str] | str = (),
                        ignore_missing_vars: bool = False) -> dict[str, list[str]]:
        """Load weights (see :func:`nets.checkpoints.load_checkpoint`).

        A Keras ``.h5`` file is taken as MobileNetV2 ImageNet weights for the trunk (the
        extra blocks and heads keep their initial values).
        """
        if str(path).endswith(".h5"):
            self.load_imagenet_weights(path)
            names = [n for n in self.variables_by_checkpoint_name()
                     if n.split("/")[1] in self.trunk_scopes]
            return {"loaded": names, "missing": [], "unexpected": [], "excluded": []}
        return super().load_checkpoint(path, model_scope=model_scope, exclude_scopes=exclude_scopes,
                                       ignore_missing_vars=ignore_missing_vars)


class SSD300MobileNetV2(SSDMobileNetV2):
    """SSDLite on MobileNetV2 (alpha 1.0) at 300x300: 19, 10, 5, 3, 2, 1 feature maps."""

    model_name = "ssd_300_mobilenet_v2"
    default_params = ssd_300_mobilenet_v2_params()
    alpha = 1.0


class SSD160MobileNetV2(SSDMobileNetV2):
    """The demo net: SSDLite on MobileNetV2 (alpha 1.0) at 160x160: 10, 5, 3, 2, 1 feature maps.

    About 3.5x cheaper than the 300 version, so a CPU trains it at tens of images per second.
    """

    model_name = "ssd_160_mobilenet_v2"
    default_params = ssd_160_mobilenet_v2_params()
    alpha = 1.0

