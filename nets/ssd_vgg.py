"""SSD on VGG-16 (SSD300 and SSD512 from one builder), Keras 3, NHWC, exact to Caffe SSD.

Architecture (Caffe SSD / balancap's TF-Slim port, without its dropout):
  VGG-16 conv1..conv5 (3x3 SAME + ReLU), pool1..pool4 2x2 stride 2 SAME (= Caffe's ceil
  mode: 75 -> 38), pool5 3x3 stride 1 SAME, conv6 3x3 dilation 6 x1024, conv7 1x1 x1024,
  then the extra blocks of ``SSDParams.extra_blocks`` (1x1 conv, explicit zero padding,
  VALID strided conv, so sizes and values match Caffe's symmetric padding), and a multibox
  head per feature layer: optional L2 normalization (conv4_3, learned scale initialised to
  20), then 3x3 ``conv_loc`` (A*4) and ``conv_cls`` (A*num_classes) convs without activation.

Each Keras layer carries its TF-Slim scope (``conv1/conv1_1``, ``block8/conv3x3``,
``block4_box/L2Normalization`` ...), from which :meth:`SSDVGG.variables_by_checkpoint_name`
gives the TF-Slim checkpoint names (DESIGN.md §4). Everything else (call, anchors,
post-processing, checkpoint I/O) is the shared base's, :class:`nets.ssd_base.SSDNet`.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, ClassVar

import keras

from nets import ssd_params
from nets.custom_layers import L2Normalization, SlimConv2D
from nets.ssd_base import BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, SSDGraph, SSDNet, feature_map
from nets.ssd_params import SSDParams

# VGG-16 (configuration D): (number of 3x3 convs, channels) per block.
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

# Keras weight attribute -> TF-Slim variable name (BatchNorm: TF-Slim's batch_norm names).
_SLIM_SUFFIX = {"kernel": "weights", "bias": "biases", "gamma": "gamma", "beta": "beta",
                "moving_mean": "moving_mean", "moving_variance": "moving_variance"}


@dataclasses.dataclass(frozen=True)
class VGGTrunk:
    """The layout of a VGG-style trunk (what differs between SSD-VGG16 and the light VGG).

    Attributes:
      blocks: (number of 3x3 convs, channels) per block; 2x2 stride-2 max-pools between the
        blocks, a 3x3 stride-1 pool5 after the last one (block sizes as in
        :func:`nets.ssd_params.compute_feat_shapes`).
      conv6: (channels, kernel, dilation) of conv6 (VGG-16's fc6 as an atrous conv).
      conv7: channels of the 1x1 conv7.
      batch_norm: conv -> BatchNorm -> ReLU (no conv bias) in the trunk and the extra blocks,
        with TF-Slim's names (``conv1/conv1_1/BatchNorm/gamma``); the multibox heads keep
        their biases. False = Caffe SSD's conv + bias + ReLU.
    """

    blocks: tuple[tuple[int, int], ...] = VGG16_BLOCKS
    conv6: tuple[int, int, int] = (1024, 3, 6)
    conv7: int = 1024
    batch_norm: bool = False


# Caffe SSD's VGG-16 (fc6/fc7 as 3x3 dilation-6 and 1x1 convs of 1024 channels).
VGG16_TRUNK = VGGTrunk()
# The light trunk of ssd_160_vgg_lite: VGG-16's layout at 1/4 to 1/2 width with fewer convs and
# BatchNorm, made to train from scratch on a CPU (about 8x fewer multiply-adds per pixel).
LITE_TRUNK = VGGTrunk(blocks=((1, 16), (1, 32), (2, 64), (2, 128), (2, 128)),
                      conv6=(256, 3, 1), conv7=256, batch_norm=True)


def _build_graph(params: SSDParams, dtype_policy: Any, trunk: VGGTrunk = VGG16_TRUNK) -> SSDGraph:
    """Build the SSD-VGG graph for ``params`` on ``trunk``.

    Returns:
      heads (images -> {'logits': [...], 'localisations': [...]}), end points
      (images -> {'block1': ..., 'block11': ...}) and {keras layer name: TF-Slim scope without
      the model scope}.
    """
    scopes: dict[str, str] = collections.OrderedDict()

    def conv(x, filters, kernel, name, scope, activation="relu", normalize=False, **kwargs):
        scopes[name] = scope
        if not normalize:
            return SlimConv2D(filters, kernel, name=name, dtype=dtype_policy,
                              activation=activation, **kwargs)(x)
        x = SlimConv2D(filters, kernel, name=name, dtype=dtype_policy, activation=None,
                       use_bias=False, **kwargs)(x)
        scopes[f"{name}_bn"] = f"{scope}/BatchNorm"
        x = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                                            name=f"{name}_bn", dtype=dtype_policy)(x)
        return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype_policy)(x)

    bn = trunk.batch_norm
    img_h, img_w = params.img_shape
    images = keras.Input(shape=(img_h, img_w, 3), name="images", dtype="float32")
    end_points: dict[str, Any] = {}
    x = images
    for b, (num_convs, channels) in enumerate(trunk.blocks, start=1):
        for c in range(1, num_convs + 1):
            x = conv(x, channels, 3, f"conv{b}_{c}", f"conv{b}/conv{b}_{c}", normalize=bn)
        end_points[f"block{b}"] = x
        if b < len(trunk.blocks):
            x = keras.layers.MaxPooling2D(2, 2, padding="same", name=f"pool{b}",
                                          dtype=dtype_policy)(x)
        else:
            # pool5: 3x3 stride 1 pad 1 in Caffe SSD (not VGG's 2x2), keeps 19x19 / 32x32.
            x = keras.layers.MaxPooling2D(3, 1, padding="same", name="pool5",
                                          dtype=dtype_policy)(x)
    # fc6/fc7 as convolutions (atrous VGG): 3x3 dilation 6 (Caffe pad 6 = SAME), then 1x1.
    channels6, kernel6, dilation6 = trunk.conv6
    x = conv(x, channels6, kernel6, "conv6", "conv6", dilation_rate=dilation6, normalize=bn)
    end_points["block6"] = x
    x = conv(x, trunk.conv7, 1, "conv7", "conv7", normalize=bn)
    end_points["block7"] = x
    for block in params.extra_blocks:
        x = conv(x, block.num_1x1, 1, f"{block.name}_conv1x1", f"{block.name}/conv1x1", normalize=bn)
        if block.padding:
            x = keras.layers.ZeroPadding2D(block.padding, name=f"{block.name}_pad",
                                           dtype=dtype_policy)(x)
        x = conv(x, block.num_outputs, block.kernel, f"{block.name}_{block.conv_scope}",
                 f"{block.name}/{block.conv_scope}", strides=block.stride, padding="VALID",
                 normalize=bn)
        end_points[block.name] = x

    logits, localisations = [], []
    for i, layer in enumerate(params.feat_layers):
        x = feature_map(end_points, params, i)
        h, w = params.feat_shapes[i]
        num_anchors = params.num_anchors_per_location[i]
        box = f"{layer}_box"
        if params.normalizations[i] > 0:
            scopes[f"{box}_l2norm"] = f"{box}/L2Normalization"
            x = L2Normalization(params.normalizations[i], name=f"{box}_l2norm",
                                dtype=dtype_policy)(x)
        loc = conv(x, num_anchors * 4, 3, f"{box}_conv_loc", f"{box}/conv_loc", activation=None)
        cls = conv(x, num_anchors * params.num_classes, 3, f"{box}_conv_cls", f"{box}/conv_cls",
                   activation=None)
        # Caffe permutes NCHW -> NHWC before flattening: channels are anchor-major.
        localisations.append(keras.layers.Reshape((h, w, num_anchors, 4),
                                                  name=f"{box}_loc_reshape", dtype=dtype_policy)(loc))
        logits.append(keras.layers.Reshape((h, w, num_anchors, params.num_classes),
                                           name=f"{box}_cls_reshape", dtype=dtype_policy)(cls))

    heads = keras.Model(images, {"logits": logits, "localisations": localisations},
                        name="ssd_graph")
    end_points_model = keras.Model(images, end_points, name="ssd_end_points")
    return SSDGraph(heads, end_points_model, scopes)


class SSDVGG(SSDNet):
    """SSD with a VGG-style trunk (:class:`VGGTrunk`); subclasses set ``model_name``,
    ``default_params`` and, for another trunk than VGG-16, ``trunk``.

    The API is :class:`nets.ssd_base.SSDNet`'s (DESIGN.md §3); this class builds the graph
    and names the variables (``conv1/conv1_1/weights``, ``block4_box/L2Normalization/gamma``,
    ``conv1/conv1_1/BatchNorm/moving_mean`` ...).
    """

    model_name: ClassVar[str] = "ssd_vgg"
    default_params: ClassVar[SSDParams]
    trunk: ClassVar[VGGTrunk] = VGG16_TRUNK
    # TF-Slim scopes of the VGG trunk: what TF-Slim's ImageNet vgg_16.ckpt can initialise.
    trunk_scopes: ClassVar[tuple[str, ...]] = tuple(
        [f"conv{b}" for b in range(1, 6)] + ["conv6", "conv7"])

    def _build(self, params: SSDParams, dtype_policy: Any) -> SSDGraph:
        return _build_graph(params, dtype_policy, self.trunk)

    def variables_by_checkpoint_name(self) -> "collections.OrderedDict[str, keras.Variable]":
        """TF-Slim name -> Keras variable, for every weight of the net."""
        result = collections.OrderedDict()
        for layer_name, scope in self._scopes.items():
            layer = self._graph.get_layer(layer_name)
            for attr, suffix in _SLIM_SUFFIX.items():
                var = getattr(layer, attr, None)
                if isinstance(var, keras.Variable):
                    result[f"{self.model_name}/{scope}/{suffix}"] = var
        if len(result) != len(self._graph.weights):
            raise AssertionError("checkpoint name map does not cover every weight of the net")
        return result


class SSD300VGG(SSDVGG):
    """SSD300 on VGG-16: 38,19,10,5,3,1 feature maps, 8,732 anchors."""

    model_name = "ssd_300_vgg"
    default_params = ssd_params.ssd_300_vgg_params()


class SSD512VGG(SSDVGG):
    """SSD512 on VGG-16: 64,32,16,8,4,2,1 feature maps, 24,564 anchors."""

    model_name = "ssd_512_vgg"
    default_params = ssd_params.ssd_512_vgg_params()


class SSD160VGGLite(SSDVGG):
    """The light VGG for CPUs (the demo net): :data:`LITE_TRUNK` with BatchNorm at 160x160,
    feature maps 20, 10, 5, 3, 1 (block4, block7 and three extra blocks), 2,390 anchors.

    Trains from scratch at about 80 images/s on a 2-core CPU (bench/bench_demo.py).
    """

    model_name = "ssd_160_vgg_lite"
    default_params = ssd_params.ssd_160_vgg_lite_params()
    trunk = LITE_TRUNK
