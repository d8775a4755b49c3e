"""What every SSD net of the registry shares: the forward call, compiled inference, anchors,
post-processing and checkpoint I/O by TF-Slim names (the API of DESIGN.md §3).

A net is a subclass of :class:`SSDNet` that sets ``model_name`` and ``default_params`` and
implements two things: :meth:`SSDNet._build` (its Keras graph, from ``SSDParams``) and
:meth:`SSDNet.variables_by_checkpoint_name` (its TF-Slim variable names). ``nets/ssd_vgg.py``
(SSD300/SSD512 on VGG-16, the light VGG) and ``nets/ssd_mobilenet.py`` (SSDLite on
MobileNetV2) are the two families; they are siblings over this base.

Per-layer outputs are flattened in anchor order, (feature layer, row, column, anchor), the order
of :meth:`SSDNet.anchors` (:func:`flatten_outputs`).
"""
from __future__ import annotations

import collections
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
# TF's own freezing (used by its TFLite and SavedModel tooling); it lives in a non-exported module.
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from nets import checkpoints, ssd_params
from nets.ssd_params import SSDParams
from tf_extended import postprocess

# BatchNorm of the batch-normalized nets (light VGG, MobileNetV2). Momentum: keras.applications'
# 0.999 and Keras' default 0.99 keep the moving statistics near their initial values (variance
# 1) for hundreds or thousands of steps, while the real first-layer variances are ~1e-3, so a
# net trained from scratch for a few hundred steps is useless at inference (measured: loss 0.18
# in training mode, 215 in inference mode after 120 steps at 0.99); 0.9 is PyTorch's default
# (its momentum=0.1). Epsilon: TF-Slim's (also keras.applications' for MobileNetV2).
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-3


# -- flattening per-layer outputs in anchor order ----------------------------------------------

def flatten_layers(tensors: Sequence[tf.Tensor], last_dim: int) -> tf.Tensor:
    """Concatenate per-layer tensors [N, h, w, A, D] into [N, sum(h*w*A), D].

    The order is (layer, row, column, anchor), the order of ``net.anchors()``.
    """
    flat = []
    for t in tensors:
        # A static anchor count (h*w*A) keeps the [N, A, D] shape static in tf.function graphs.
        inner = t.shape[1:-1]
        size = int(np.prod(inner)) if inner.is_fully_defined() else -1
        flat.append(tf.reshape(t, [tf.shape(t)[0], size, last_dim]))
    return tf.concat(flat, axis=1)


def flatten_outputs(out: Mapping[str, Sequence[tf.Tensor]]) -> dict[str, tf.Tensor]:
    """Flatten the network's output dict (DESIGN.md §8).

    Args:
      out: ``{'logits': [N,h,w,A,C] per layer, 'predictions': same, 'localisations':
        [N,h,w,A,4] per layer}`` as returned by ``net(images)``.

    Returns:
      ``{'logits': [N, num_anchors, C], 'predictions': [N, num_anchors, C],
      'localisations': [N, num_anchors, 4]}`` (Caffe ``(x, y, w, h)`` offsets), rows in the
      order of ``net.anchors()``. Entries already flat (a tensor, not a list) pass through.
    """
    result = {}
    for key in ("logits", "predictions", "localisations"):
        value = out[key]
        if isinstance(value, (list, tuple)):
            last_dim = 4 if key == "localisations" else int(value[0].shape[-1])
            value = flatten_layers(value, last_dim)
        result[key] = value
    return result


def feature_map(end_points: Mapping[str, Any], params: SSDParams, index: int):
    """The end point of feature layer ``index``, checked against ``params.feat_shapes``.

    Raises ValueError naming the layer when it is not an end point or its (h, w) differs from
    the params (the anchors would then not match the outputs).
    """
    layer = params.feat_layers[index]
    if layer not in end_points:
        raise ValueError(f"Feature layer {layer!r} is not an end point of this net "
                         f"({', '.join(end_points)}).")
    x = end_points[layer]
    expected = tuple(params.feat_shapes[index])
    actual = tuple(x.shape[1:3])
    if actual != expected:
        raise ValueError(f"SSDParams.feat_shapes[{index}] is {expected}, but {layer} is {actual} "
                         f"for img_shape {tuple(params.img_shape)}: use "
                         f"params.with_img_shape({tuple(params.img_shape)}).")
    return x


class SSDGraph(NamedTuple):
    """What :meth:`SSDNet._build` returns.

    Attributes:
      heads: images -> ``{'logits': [...], 'localisations': [...]}`` (one per feature layer).
      end_points: images -> ``{end-point name: activation}``.
      scopes: ``{keras layer name: TF-Slim scope without the model scope}``, in checkpoint order.
    """

    heads: keras.Model
    end_points: keras.Model
    scopes: dict[str, str]


class SSDNet(keras.Model):
    """An SSD network; subclasses set ``model_name``, ``default_params`` and build the graph.

    Call: ``net(images, training=False)`` with images float32 [N, H, W, 3] (RGB minus the
    means 123, 117, 104; H, W = ``params.img_shape``) returns
    ``{'logits': [N,h,w,A,C] per layer, 'predictions': softmax of logits,
    'localisations': [N,h,w,A,4] per layer}``, offsets in Caffe ``(x, y, w, h)`` order.
    All outputs are float32, also under a ``'mixed_bfloat16'`` policy.
    """

    model_name: ClassVar[str] = "ssd"
    default_params: ClassVar[SSDParams]
    # TF-Slim scopes of the trunk: what an ImageNet classification checkpoint can initialise.
    trunk_scopes: ClassVar[tuple[str, ...]] = ()

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
        graph = self._build(params, dtype_policy)
        self._graph = graph.heads
        self._end_points_model = graph.end_points
        self._scopes = graph.scopes
        self._anchors: Optional[np.ndarray] = None
        self._inference_fn = None
        self.built = True

    # -- what a net implements -----------------------------------------------------------

    def _build(self, params: SSDParams, dtype_policy: Any) -> SSDGraph:
        """Build the Keras graph of the net for ``params`` (every layer with ``dtype_policy``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _build()")

    def variables_by_checkpoint_name(self) -> "collections.OrderedDict[str, keras.Variable]":
        """TF-Slim name -> Keras variable, for every weight of the net (DESIGN.md §4)."""
        raise NotImplementedError(f"{type(self).__name__} must implement "
                                  "variables_by_checkpoint_name()")

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
        """Trunk and extra-block activations by end-point name (VGG: block1 .. block5, the
        conv outputs before each pool, block6 = conv6, block7 = conv7, block8 ..; MobileNetV2:
        the two trunk maps and the extra blocks)."""
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
        in the order of :meth:`anchors` (see :func:`flatten_outputs`)."""
        return flatten_outputs(out)

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
        flat = flatten_outputs(out)
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
        Ordered like :meth:`variables_by_checkpoint_name` (Caffe's layer order for the VGG
        nets: trunk, extra blocks, then per-layer loc/cls heads).
        """
        return collections.OrderedDict(
            (var.path, name) for name, var in self.variables_by_checkpoint_name().items())

    def weight_decay_variables(self) -> list:
        """Regular conv kernels (TF-Slim ``.../weights``): what TF-Slim's ``l2_regularizer``
        applied to; not biases, BatchNorm parameters, the L2Normalization scale or depthwise
        kernels (TF-Slim's MobileNet training scope does not decay those)."""
        return [v for name, v in self.variables_by_checkpoint_name().items()
                if name.endswith("/weights")]

    def load_checkpoint(self, path: str, model_scope: Optional[str] = None,
                        exclude_scopes: Sequence[str] | str = (),
                        ignore_missing_vars: bool = False) -> dict[str, list[str]]:
        """Load weights; see :func:`nets.checkpoints.load_checkpoint`."""
        return checkpoints.load_checkpoint(self, path, model_scope=model_scope,
                                           exclude_scopes=exclude_scopes,
                                           ignore_missing_vars=ignore_missing_vars)

    def save_checkpoint(self, path: str) -> str:
        """Write a TF1 checkpoint with TF-Slim names + ``<path>.ssd.json``; see
        :func:`nets.checkpoints.save_checkpoint`. Returns the prefix written."""
        return checkpoints.save_checkpoint(self, path)
