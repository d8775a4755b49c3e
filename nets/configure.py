"""Which net to build: flags + checkpoint -> (model name, SSDParams), and the net itself.

The one place that decides a net's hyper-parameters for train, eval, detect, the notebook and
export, so that every tool builds the same anchors for one checkpoint. Each setting comes from
the caller's value (a flag) when given, else the checkpoint's ``.ssd.json`` sidecar, else (for
checkpoints without one: the original project's published ``ssd_300_vgg.ckpt``, converted
Caffe models) the checkpoint itself (model scope, class-head size), else the dataset's number
of classes and the network's defaults. A value that contradicts the sidecar is an error:
evaluating with the wrong anchors gives a silently wrong mAP (reference §12).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

from fileio.checkpoint_files import resolve_checkpoint
from nets import checkpoints, nets_factory, ssd_params
from nets.ssd_params import SSDParams

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "ssd_300_vgg"


class SettingsError(ValueError):
    """Settings that cannot work together (flags vs. the checkpoint, an unknown name, a size
    too small for the net); the message says which. Scripts exit with code 2."""

    exit_code = 2


def _network(model_name: str):
    try:
        return nets_factory.get_network(model_name)
    except ValueError as err:
        raise SettingsError(f"--model_name: {err}") from None


def _model_name_from_checkpoint(prefix: str) -> Optional[str]:
    object_based, scopes = checkpoints.checkpoint_scopes(prefix)
    known = [s for s in scopes if s in nets_factory.network_names()]
    return known[0] if known else None


def _block_index(name: str) -> int:
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0


def _fit_img_shape(params: SSDParams, size: int) -> SSDParams:
    """``params`` at a square input ``size``; trailing feature layers that would be empty at
    that size are dropped (anchor sizes and steps stay in pixels of the original size)."""
    shape = (int(size), int(size))
    try:
        return params.with_img_shape(shape)
    except ValueError:
        pass
    keep = len(params.feat_layers)
    while keep > 1:
        keep -= 1
        layers = params.feat_layers[:keep]
        blocks = tuple(b for b in params.extra_blocks
                       if b.name in layers or _block_index(b.name) < _block_index(layers[-1]))
        try:
            feat_shapes = ssd_params.compute_feat_shapes(shape, layers, blocks)
        except ValueError:
            continue
        logger.warning("Input size %d is too small for every feature layer: using %s only.",
                       size, ", ".join(layers))
        return dataclasses.replace(
            params, img_shape=shape, feat_layers=layers, feat_shapes=feat_shapes,
            anchor_sizes=params.anchor_sizes[:keep], anchor_ratios=params.anchor_ratios[:keep],
            anchor_steps=params.anchor_steps[:keep], normalizations=params.normalizations[:keep],
            extra_blocks=blocks, anchor_preset=ssd_params.CUSTOM_PRESET)
    raise SettingsError(f"input size {size} is too small for this network.")


def resolve_model(model_name: Optional[str] = None, *,
                  checkpoint: Optional[str] = None,
                  num_classes: Optional[int] = None,
                  anchor_preset: Optional[str] = None,
                  image_size: Optional[int] = None,
                  default_num_classes: Optional[int] = None,
                  drop_empty_layers: bool = False) -> tuple[str, SSDParams]:
    """``(model_name, params)`` of the net to build.

    Args:
      model_name: ``--model_name``, or None (the sidecar's, else the checkpoint's scope,
        else ssd_300_vgg).
      checkpoint: a checkpoint (prefix, file or directory) whose net this is, or None (a net
        to train: the settings come from the arguments and the defaults only).
      num_classes: ``--num_classes`` (with the background), or None.
      anchor_preset: ``--anchor_preset`` ('voc', 'coco_ft', ...), or None.
      image_size: square input side (``--train_image_size``, ``--eval_image_size``), or None.
      default_num_classes: the dataset's number of classes (incl. background), used when
        neither the argument nor the checkpoint says.
      drop_empty_layers: with ``image_size`` too small for every feature layer, drop the
        trailing ones (training on tiny inputs) instead of failing.

    Raises:
      SettingsError: an argument contradicts the sidecar, or is unknown / cannot work.
      fileio.checkpoint_files.CheckpointNotFoundError: no checkpoint at ``checkpoint``.
      ValueError: an unreadable sidecar (names the file).
    """
    prefix = resolve_checkpoint(checkpoint) if checkpoint else None
    metadata = (checkpoints.read_metadata(prefix) or {}) if prefix else {}
    where = f"{prefix}{checkpoints.SIDECAR_SUFFIX}"
    if metadata:
        if model_name is not None and metadata.get("model_name") not in (None, model_name):
            raise SettingsError(f"{where}: checkpoint is a {metadata['model_name']} model, but "
                                f"--model_name={model_name}")
        if num_classes is not None and "num_classes" in metadata and \
                int(metadata["num_classes"]) != int(num_classes):
            raise SettingsError(f"{where}: checkpoint has {metadata['num_classes']} classes, but "
                                f"--num_classes={num_classes}")
        if anchor_preset is not None and metadata.get("anchor_preset") not in (None, anchor_preset):
            raise SettingsError(f"{where}: checkpoint was trained with anchor preset "
                                f"{metadata['anchor_preset']!r}, but --anchor_preset={anchor_preset}")
    model_name = (model_name or metadata.get("model_name")
                  or (_model_name_from_checkpoint(prefix) if prefix else None) or DEFAULT_MODEL)
    params = _network(model_name).default_params
    if metadata:
        params = checkpoints.params_from_metadata(metadata, params)
    else:
        if num_classes is None and prefix:
            num_classes = checkpoints.class_head_size(prefix, model_name, params)
        if num_classes is None:
            num_classes = default_num_classes
        if num_classes is not None:
            params = params.with_num_classes(int(num_classes))
        if anchor_preset is not None:
            try:
                params = params.with_anchor_preset(anchor_preset)
            except ValueError as err:
                raise SettingsError(f"--anchor_preset: {err}") from None
        elif prefix:
            logger.warning("%s has no %s sidecar: using anchor preset %r; pass --anchor_preset "
                           "if the model was trained with other anchors (the original's "
                           "published ssd_300_vgg.ckpt needs 'coco_ft').", prefix,
                           checkpoints.SIDECAR_SUFFIX, params.anchor_preset)
    if image_size and tuple(params.img_shape) != (image_size, image_size):
        if prefix:
            logger.warning("Running at %dx%d instead of the trained %s (anchor sizes and steps "
                           "stay in pixels).", image_size, image_size, tuple(params.img_shape))
        if drop_empty_layers:
            params = _fit_img_shape(params, image_size)
        else:
            try:
                params = params.with_img_shape((int(image_size), int(image_size)))
            except ValueError as err:
                raise SettingsError(f"input size {image_size}: {err}") from None
    return model_name, params


def build_net(model_name: Optional[str] = None, *, checkpoint: Optional[str] = None,
              num_classes: Optional[int] = None, anchor_preset: Optional[str] = None,
              image_size: Optional[int] = None, default_num_classes: Optional[int] = None,
              dtype_policy: Any = None, load_weights: bool = True):
    """The net for a checkpoint (:func:`resolve_model`), its weights loaded from it.

    Without a checkpoint the weights are random (smoke tests and demos only; logged).
    """
    model_name, params = resolve_model(model_name, checkpoint=checkpoint, num_classes=num_classes,
                                       anchor_preset=anchor_preset, image_size=image_size,
                                       default_num_classes=default_num_classes)
    net = nets_factory.get_network(model_name)(params, dtype_policy=dtype_policy)
    if checkpoint and load_weights:
        net.load_checkpoint(checkpoint)
    elif not checkpoint:
        logger.warning("No checkpoint: %s has random weights, detections are meaningless.",
                       model_name)
    return net
