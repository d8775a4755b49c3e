"""SSD on VGG-16 (SSD300 and SSD512 from one builder), Keras 3, NHWC, exact to Caffe SSD.

Architecture (Caffe SSD / balancap's TF-Slim port, without its dropout):
  VGG-16 conv1..conv5 (3x3 SAME + ReLU), pool1..pool4 2x2 stride 2 SAME (= Caffe's ceil
  mode: 75 -> 38), pool5 3x3 stride 1 SAME, conv6 3x3 dilation 6 x1024, conv7 1x1 x1024,
  then the extra blocks of ``SSDParams.extra_blocks`` (1x1 conv, explicit zero padding,
  VALID strided conv, so sizes and values match Caffe's symmetric padding), and a multibox
  head per feature layer: optional L2 normalization (conv4_3, learned scale initialised to
  20), then 3x3 ``conv_loc`` (A*4) and ``conv_cls`` (A*num_classes) convs without activation.

Each Keras layer carries its TF-Slim scope (``conv1/conv1_1``, ``block8/conv3x3``,
``block4_box/L2Normalization`` ...), from which :meth:`SSDVGG.checkpoint_name_map` makes the
one map between Keras variable paths and the TF-Slim checkpoint names (DESIGN.md §4).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, ClassVar, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from nets import ssd_common, ssd_params
from nets.custom_layers import L2Normalization, SlimConv2D
from nets.ssd_params import SSDParams

# VGG-16 (configuration D): (number of 3x3 convs, channels) per block.
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

# Keras weight attribute -> TF-Slim variable name (BatchNorm: TF-Slim's batch_norm names).
_SLIM_SUFFIX = {"kernel": "weights", "bias": "biases", "gamma": "gamma", "beta": "beta",
                "moving_mean": "moving_mean", "moving_variance": "moving_variance"}

# BatchNorm of the batch-normalized nets (light VGG, MobileNetV2). Momentum: keras.applications'
# 0.999 and Keras' default 0.99 keep the moving statistics near their initial values (variance
# 1) for hundreds or thousands of steps, while the real first-layer variances are ~1e-3, so a
# net trained from scratch for a few hundred steps is useless at inference (measured: loss 0.18
# in training mode, 215 in inference mode after 120 steps at 0.99); 0.9 is PyTorch's default
# (its momentum=0.1). Epsilon: TF-Slim's.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-3


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


def _build_graph(params: SSDParams, dtype_policy: Any, trunk: VGGTrunk = VGG16_TRUNK
                 ) -> tuple[keras.Model, keras.Model, dict]:
    """Build the SSD-VGG graph for ``params`` on ``trunk``.

    Returns:
      (heads model: images -> {'logits': [...], 'localisations': [...]},
       end-points model: images -> {'block1': ..., 'block11': ...},
       {keras layer name: TF-Slim scope without the model scope}).
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
        x = ssd_common.feature_map(end_points, params, i)
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
    return heads, end_points_model, scopes


class SSDVGG(keras.Model):
    """SSD with a VGG-16 trunk; subclasses only set ``model_name`` and ``default_params``.

    Call: ``net(images, training=False)`` with images float32 [N, H, W, 3] (RGB minus the
    means 123, 117, 104; H, W = ``params.img_shape``) returns
    ``{'logits': [N,h,w,A,C] per layer, 'predictions': softmax of logits,
    'localisations': [N,h,w,A,4] per layer}``, offsets in Caffe ``(x, y, w, h)`` order.
    All outputs are float32, also under a ``'mixed_bfloat16'`` policy.
    """

    model_name: ClassVar[str] = "ssd_vgg"
    default_params: ClassVar[SSDParams]
    trunk: ClassVar[VGGTrunk] = VGG16_TRUNK
    # TF-Slim scopes of the VGG trunk: what TF-Slim's ImageNet vgg_16.ckpt can initialise.
    trunk_scopes: ClassVar[tuple[str, ...]] = tuple(
        [f"conv{b}" for b in range(1, 6)] + ["conv6", "conv7"])

    def __init__(self, params: Optional[SSDParams] = None, *, dtype_policy: Any = None,
                 name: Optional[str] = None):
        """Build the net.

        Args:
          params: hyper-parameters; ``default_params`` of the class when None.
          dtype_policy: Keras dtype policy for every layer, e.g. ``'mixed_bfloat16'`` (compute
            in bfloat16, variables and outputs in float32); None = the global policy.
          name: Keras name; the registry name (``model_name``) when None.
        """
        params = params if params is not None else self.default_params
        if not isinstance(params, SSDParams):
            raise TypeError(f"params must be an SSDParams, got {type(params).__name__}.")
        super().__init__(name=name or self.model_name)
        self._params = params
        self._graph, self._end_points_model, self._scopes = _build_graph(params, dtype_policy,
                                                                          self.trunk)
        self._anchors: Optional[np.ndarray] = None
        self._inference_fn = None
        self.built = True

    # -- properties ----------------------------------------------------------------------

    @property
    def params(self) -> SSDParams:
        """The (frozen) hyper-parameters the net was built from."""
        return self._params

    # -- forward -------------------------------------------------------------------------

    def call(self, images, training: bool = False) -> dict[str, list[tf.Tensor]]:
        raw = self._graph(images, training=training)
        logits = [tf.cast(t, tf.float32) for t in raw["logits"]]
        localisations = [tf.cast(t, tf.float32) for t in raw["localisations"]]
        predictions = [tf.nn.softmax(t, axis=-1) for t in logits]
        return {"logits": logits, "predictions": predictions, "localisations": localisations}

    def end_points(self, images, training: bool = False) -> dict[str, tf.Tensor]:
        """Trunk activations by TF-Slim end-point name: block1 .. block5 (conv outputs before
        each pool), block6 (conv6), block7 (conv7), block8 .. (extra blocks)."""
        return self._end_points_model(images, training=training)

    def inference(self, images) -> dict[str, list[tf.Tensor]]:
        """``self(images, training=False)`` through a ``tf.function`` with a fixed signature.

        Tracing once lets TensorFlow's graph optimizer fuse conv + bias + ReLU (oneDNN),
        which is what makes CPU inference fast; use this, not the eager call, for speed.
        It reads the variables at each call, so it follows training and checkpoint loads.
        """
        if self._inference_fn is None:
            self._inference_fn = self.inference_function()
        return self._inference_fn(tf.convert_to_tensor(images, tf.float32))

    def inference_function(self, frozen: bool = False, jit_compile: bool = False):
        """A compiled forward pass ``images float32 [N, H, W, 3] -> outputs dict``.

        Args:
          frozen: bake the current weights into the graph as constants (a snapshot: later
            weight changes are not seen; build a new function after loading a checkpoint).
            Lets oneDNN keep the weights in its own layout between calls, measured ~1.3x faster
            for batch-1 CPU inference (bench/bench_nets.py). For detection-only processes.
          jit_compile: compile with XLA (measured faster than plain graphs on this CPU in
            fp32, slower under mixed_bfloat16).
        """
        img_h, img_w = self._params.img_shape
        spec = tf.TensorSpec([None, img_h, img_w, 3], tf.float32, name="images")
        fn = tf.function(lambda x: self(x, training=False), input_signature=[spec],
                         jit_compile=jit_compile)
        if not frozen:
            return fn
        # convert_variables_to_constants_v2 is TF's own freezing (used by its TFLite and
        # SavedModel tooling); it lives in a non-exported module.
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2)
        traced = fn.get_concrete_function()
        concrete = convert_variables_to_constants_v2(traced)

        def frozen_fn(images):
            flat = concrete(tf.convert_to_tensor(images, tf.float32))
            # The frozen function returns a flat list in tf.nest order: restore the dict.
            return tf.nest.pack_sequence_as(traced.structured_outputs, flat)

        return frozen_fn

    @staticmethod
    def flat_outputs(out: Mapping[str, Sequence[tf.Tensor]]) -> dict[str, tf.Tensor]:
        """Per-layer outputs -> ``{'logits','predictions': [N,A,C], 'localisations': [N,A,4]}``
        in the order of :meth:`anchors` (see :func:`nets.ssd_common.flatten_outputs`)."""
        return ssd_common.flatten_outputs(out)

    # -- anchors and post-processing -------------------------------------------------------

    @tf.autograph.experimental.do_not_convert  # NumPy constant: never graph code
    def anchors(self) -> np.ndarray:
        """np.float32 [num_anchors, 4] ``(ymin, xmin, ymax, xmax)``, normalized, unclipped,
        ordered (feature layer, row, column, anchor) like :meth:`flat_outputs`."""
        if self._anchors is None:
            self._anchors = ssd_params.anchors(self._params)
            self._anchors.setflags(write=False)
        return self._anchors

    def detected_bboxes(self, out: Mapping[str, Any], select_threshold: float = 0.01,
                        nms_threshold: float = 0.45, select_top_k: int = 400,
                        keep_top_k: int = 200, clip_window=None) -> dict[str, tf.Tensor]:
        """Decode + per-class NMS, delegated to ``tf_extended.postprocess.detected_bboxes``.

        Args:
          out: the output of ``net(images)`` (per layer) or of :meth:`flat_outputs`.

        Returns:
          ``{'boxes': [N,K,4] (ymin, xmin, ymax, xmax) normalized, 'scores': [N,K],
          'classes': [N,K] int32 (1..num_classes-1), 'num_detections': [N] int32}``,
          K = keep_top_k, sorted by score, zero-padded.
        """
        from tf_extended import postprocess  # lazy: keeps `import nets` light

        flat = ssd_common.flatten_outputs(out)
        return postprocess.detected_bboxes(
            flat["predictions"], flat["localisations"], self.anchors(),
            self._params.prior_scaling, select_threshold=select_threshold,
            nms_threshold=nms_threshold, select_top_k=select_top_k, keep_top_k=keep_top_k,
            clip_window=clip_window)

    # -- variables and checkpoints ---------------------------------------------------------

    def checkpoint_name_map(self) -> "collections.OrderedDict[str, str]":
        """The one map Keras variable path -> TF-Slim checkpoint name (DESIGN.md §4).

        E.g. ``'conv1_1/kernel' -> 'ssd_300_vgg/conv1/conv1_1/weights'``,
        ``'block4_box_l2norm/gamma' -> 'ssd_300_vgg/block4_box/L2Normalization/gamma'``.
        Ordered like Caffe's layer order (trunk, extra blocks, then per-layer loc/cls heads).
        """
        return collections.OrderedDict(
            (var.path, name) for name, var in self.variables_by_checkpoint_name().items())

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

    def weight_decay_variables(self) -> list:
        """Conv kernels: the variables TF-Slim's ``l2_regularizer`` applied to (not biases,
        not the L2Normalization scale)."""
        return [v for name, v in self.variables_by_checkpoint_name().items()
                if name.endswith("/weights")]

    def load_checkpoint(self, path: str, model_scope: Optional[str] = None,
                        exclude_scopes: Sequence[str] | str = (),
                        ignore_missing_vars: bool = False) -> dict[str, list[str]]:
        """Load weights; see :func:`nets.checkpoints.load_checkpoint`."""
        from nets import checkpoints
        return checkpoints.load_checkpoint(self, path, model_scope=model_scope,
                                           exclude_scopes=exclude_scopes,
                                           ignore_missing_vars=ignore_missing_vars)

    def save_checkpoint(self, path: str) -> str:
        """Write a TF1 checkpoint with TF-Slim names + ``<path>.ssd.json``; see
        :func:`nets.checkpoints.save_checkpoint`. Returns the prefix written."""
        from nets import checkpoints
        return checkpoints.save_checkpoint(self, path)


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
