"""Checkpoint I/O by TF-Slim variable names (DESIGN.md §4) and the metadata sidecar (§8).

Formats read by :func:`load_checkpoint`:
  * TF1 name-based checkpoints (``.index`` + ``.data-*``), as written by TF-Slim/``Saver``, by
    balancap/SSD-Tensorflow (the published ``ssd_300_vgg.ckpt``), by ``caffe_to_tensorflow.py``
    and by :func:`save_checkpoint`: variables are matched by their TF-Slim names
    (``ssd_300_vgg/conv1/conv1_1/weights`` ...; see ``net.checkpoint_name_map()``).
  * TF-Slim's ImageNet ``vgg_16.ckpt`` with ``model_scope='vgg_16'``: conv1..conv5 by name,
    fc6/fc7 decimated into conv6/conv7 (:func:`decimate_fc6`, :func:`decimate_fc7`).
  * This project's training checkpoints, object-based ``tf.train.Checkpoint(model=net, ...)``
    (the net under the key ``'model'``, :data:`TRAINING_CHECKPOINT_KEY`): their variables are
    matched through the Keras paths the object graph records, then handled by TF-Slim name
    like TF1 checkpoints (exclusions, error lists); the optimizer state is not read here.

A path may be a checkpoint prefix (``dir/model.ckpt``), one of its files
(``dir/model.ckpt.index``) or a directory (its latest checkpoint).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import uuid
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from fileio import atomic
from fileio.checkpoint_files import (CheckpointNotFoundError, open_reader, read_tensor,
                                     resolve_checkpoint, write_state_file)
from nets import ssd_params as ssd_params_lib
from nets.ssd_params import SSDParams

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".ssd.json"
# Key of the net inside the trainer's object-based tf.train.Checkpoint(model=net, ...).
TRAINING_CHECKPOINT_KEY = "model"
# Key of the trained (raw) weights in that checkpoint when ``model`` holds their moving average.
TRAINING_RAW_WEIGHTS_KEY = "train_model"
# TF-Slim scope of the ImageNet VGG-16 checkpoint (vgg_16.ckpt from TF-Slim's model zoo).
VGG16_SCOPE = "vgg_16"
# Variables of vgg_16.ckpt that an SSD net does not use (ImageNet classifier, bookkeeping).
_VGG16_UNUSED = (f"{VGG16_SCOPE}/fc8", f"{VGG16_SCOPE}/mean_rgb", "global_step")
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_MAX_LISTED = 30


class CheckpointMismatchError(ValueError):
    """The checkpoint's variables do not match the net's; the lists say which, by name.

    Attributes:
      missing: net variables (TF-Slim names) absent from the checkpoint.
      unexpected: checkpoint variables of the model's scope that the net does not have.
      wrong_shape: (name, checkpoint shape, net shape) triples.
    """

    def __init__(self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 wrong_shape: Sequence[tuple[str, tuple, tuple]] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.wrong_shape = list(wrong_shape)


# -- metadata sidecar ----------------------------------------------------------------------

def metadata_for(model_name: str, params: SSDParams) -> dict[str, Any]:
    """The sidecar dict (DESIGN.md §8) for a net ``model_name`` built from ``params``."""
    return {
        "model_name": model_name,
        "num_classes": int(params.num_classes),
        "anchor_preset": params.anchor_preset,
        "img_shape": [int(s) for s in params.img_shape],
        "anchor_sizes": [list(map(float, s)) for s in params.anchor_sizes],
        "anchor_ratios": [list(map(float, r)) for r in params.anchor_ratios],
        "anchor_steps": [float(s) for s in params.anchor_steps],
        "anchor_offset": float(params.anchor_offset),
        # Beyond the §8 minimum: what decoding and a non-default architecture need.
        "prior_scaling": [float(s) for s in params.prior_scaling],
        "normalizations": [float(n) for n in params.normalizations],
        "feat_layers": list(params.feat_layers),
        "feat_shapes": [[int(h), int(w)] for h, w in params.feat_shapes],
        "extra_blocks": [dataclasses.asdict(b) for b in params.extra_blocks],
    }


def write_metadata(prefix: str, model_name: str, params: SSDParams) -> str:
    """Write ``<prefix>.ssd.json`` atomically; returns its path."""
    return atomic.write_json(prefix + SIDECAR_SUFFIX, metadata_for(model_name, params))


def read_metadata(prefix: str) -> Optional[dict[str, Any]]:
    """The sidecar of a checkpoint (prefix, file or directory) as a dict; None when absent."""
    try:
        prefix = resolve_checkpoint(prefix)
    except CheckpointNotFoundError:
        pass
    path = prefix + SIDECAR_SUFFIX
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable checkpoint metadata ({err}).") from None
    if not isinstance(data, dict) or "model_name" not in data:
        raise ValueError(f"{path}: checkpoint metadata lacks 'model_name'.")
    return data


def params_from_metadata(metadata: Mapping[str, Any], base: SSDParams) -> SSDParams:
    """``base`` (the network's default params) updated with a sidecar's values.

    Sidecars written here hold every per-layer field, so any architecture round-trips; a
    minimal sidecar (only the §8 keys) gets its feature shapes recomputed for its img_shape.
    """
    replace: dict[str, Any] = {}
    if "num_classes" in metadata:
        replace["num_classes"] = replace["no_annotation_label"] = int(metadata["num_classes"])
    for key in ("img_shape", "feat_layers", "feat_shapes", "anchor_sizes", "anchor_ratios",
                "anchor_steps", "anchor_offset", "normalizations", "prior_scaling"):
        if key in metadata:
            replace[key] = ssd_params_lib.as_tuples(metadata[key])
    if "extra_blocks" in metadata:
        replace["extra_blocks"] = tuple(ssd_params_lib.ExtraBlock(**b)
                                        for b in metadata["extra_blocks"])
    img_shape = tuple(replace.get("img_shape", base.img_shape))
    if "feat_shapes" not in replace and img_shape != tuple(base.img_shape):
        replace["feat_shapes"] = ssd_params_lib.compute_feat_shapes(
            img_shape, replace.get("feat_layers", base.feat_layers),
            replace.get("extra_blocks", base.extra_blocks))
    preset = metadata.get("anchor_preset", ssd_params_lib.CUSTOM_PRESET)
    table = ssd_params_lib.ANCHOR_PRESETS.get(img_shape)
    if "anchor_sizes" not in replace and table and preset in table:
        replace["anchor_sizes"] = table[preset]
    sizes = replace.get("anchor_sizes", base.anchor_sizes)
    if (table and table.get(preset) != sizes) or preset not in ssd_params_lib.anchor_preset_names():
        preset = ssd_params_lib.CUSTOM_PRESET
    replace["anchor_preset"] = preset
    return dataclasses.replace(base, **replace)


def class_head_size(path: str, model_name: str, params: SSDParams) -> Optional[int]:
    """Number of classes of a TF1 checkpoint's first class head (a ``model_name`` net built
    from ``params`` would read it), or None if it has none."""
    prefix = resolve_checkpoint(path)
    reader = open_reader(prefix)
    name = f"{model_name}/{params.feat_layers[0]}_box/conv_cls/biases"
    if not reader.has_tensor(name):
        return None
    size = reader.get_variable_to_shape_map()[name][0]
    return size // params.num_anchors_per_location[0]


def checkpoint_scopes(path: str) -> tuple[bool, list[str]]:
    """(is object-based, top-level scopes of its variable names, most frequent first).

    An object-based checkpoint (the trainer's) has no TF-Slim scopes: its list is empty.
    """
    names = open_reader(resolve_checkpoint(path)).get_variable_to_shape_map()
    if _OBJECT_GRAPH_KEY in names:
        return True, []
    return False, _scopes_in(names)


def resolve_model_scope(path: str, model_name: str, given: Optional[str]) -> Optional[str]:
    """The ``model_scope`` to load the checkpoint at ``path`` into a ``model_name`` net with.

    - Not given: the net's own scope when the checkpoint has it; :data:`VGG16_SCOPE` for
      TF-Slim's ImageNet VGG-16 checkpoint (the Caffe recipe's initialisation); else None.
    - Given but absent from a checkpoint that holds the net's own scope (the original
      README's second fine-tuning command keeps ``--checkpoint_model_scope=vgg_16`` on an SSD
      checkpoint): ignored, with a warning. Object-based checkpoints have no scope: None.
    """
    object_based, scopes = checkpoint_scopes(path)
    if object_based:
        if given and given != model_name:
            logger.warning("--checkpoint_model_scope=%s ignored: %s is a training checkpoint of "
                           "this project (variables are matched by object, not by scope).",
                           given, path)
        return None
    if given:
        if given not in scopes and model_name in scopes:
            logger.warning("--checkpoint_model_scope=%s ignored: %s has no variable under "
                           "'%s/' but has the net's own scope '%s/'.", given, path, given,
                           model_name)
            return None
        return given
    if model_name in scopes:
        return None
    if VGG16_SCOPE in scopes:
        logger.info("%s is TF-Slim's ImageNet VGG-16: loading the trunk from it "
                    "(--checkpoint_model_scope=%s; fc6/fc7 decimated into conv6/conv7).",
                    path, VGG16_SCOPE)
        return VGG16_SCOPE
    return None


def only_excluded_fc_layers(err: "CheckpointMismatchError", scope: Optional[str],
                            model_name: str, exclude_scopes: Sequence[str]) -> bool:
    """True when a vgg_16 load failed only on fc6/fc7 whose targets conv6/conv7 are excluded
    (the original README excludes them when starting from vgg_16.ckpt)."""
    if scope != VGG16_SCOPE or err.missing or err.wrong_shape or not err.unexpected:
        return False
    unused = [f"{VGG16_SCOPE}/fc{i}" for i in (6, 7)
              if in_scopes(f"{model_name}/conv{i}", exclude_scopes)]
    return bool(unused) and all(in_scopes(name, unused) for name in err.unexpected)


# -- saving --------------------------------------------------------------------------------

def save_checkpoint(net, path: str) -> str:
    """Write the net's weights as a TF1 checkpoint with TF-Slim names, plus its sidecar.

    Files: ``<path>.index``, ``<path>.data-00000-of-00001`` (readable by
    ``tf.train.load_checkpoint``, TF1 ``Saver`` and TF-Slim) and ``<path>.ssd.json``. Written
    under a temporary prefix and renamed (data, sidecar, then the index that marks the
    checkpoint as present), so a reader never sees half a checkpoint. The folder's
    ``checkpoint`` state file then names it, so TF1 tools given the folder find it.
    Returns ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    variables = net.variables_by_checkpoint_name()
    names = list(variables)
    tensors = [tf.convert_to_tensor(v) for v in variables.values()]
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        tf.raw_ops.SaveV2(prefix=tmp, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=tensors)
        for data_file in glob.glob(glob.escape(tmp) + ".data-*"):
            os.replace(data_file, path + data_file[len(tmp):])
        write_metadata(path, net.model_name, net.params)
        os.replace(tmp + ".index", path + ".index")
    finally:
        for leftover in glob.glob(glob.escape(tmp) + "*"):
            os.remove(leftover)
    write_state_file(path)
    logger.info("Saved %d variables to %s", len(names), path)
    return path


# -- loading -------------------------------------------------------------------------------

def decimate_fc6(weights: np.ndarray) -> np.ndarray:
    """VGG-16 fc6 [7, 7, 512, 4096] -> conv6 [3, 3, 512, 1024] (atrous VGG, DESIGN.md §7).

    Keeps every 4th output filter and every 3rd tap (rows/cols 0, 3, 6): with dilation 6
    (= 3 * the stride-2 pool5 the SSD net drops) the kept taps see the same pixels.
    """
    return weights[::3, ::3, :, ::4]


def decimate_fc7(weights: np.ndarray) -> np.ndarray:
    """VGG-16 fc7 [1, 1, 4096, 4096] -> conv7 [1, 1, 1024, 1024]: every 4th input and output."""
    return weights[:, :, ::4, ::4]


def split_scopes(scopes: Sequence[str] | str | None) -> list[str]:
    """Comma-separated TF-Slim scopes (or a list) -> list (blanks and trailing '/' dropped)."""
    if not scopes:
        return []
    if isinstance(scopes, str):
        scopes = scopes.split(",")
    return [s.strip().rstrip("/") for s in scopes if s and s.strip()]


def in_scopes(name: str, scopes: Iterable[str]) -> bool:
    """True when the TF-Slim ``name`` is inside one of ``scopes`` (whole path components:
    ``ssd_300_vgg/block1`` holds ``ssd_300_vgg/block1/...`` but not ``.../block10/...``)."""
    return any(name == s or name.startswith(s + "/") for s in scopes)


def _scopes_in(names: Iterable[str]) -> list[str]:
    """First path components of checkpoint names, most frequent first."""
    counts: dict[str, int] = {}
    for name in names:
        if name != _OBJECT_GRAPH_KEY:
            top = name.split("/", 1)[0]
            counts[top] = counts.get(top, 0) + 1
    return sorted(counts, key=lambda s: -counts[s])


def _listing(label: str, items: Sequence[str]) -> list[str]:
    lines = [f"  {label}: {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        lines.append(f"  ... and {len(items) - _MAX_LISTED} more {label}")
    return lines


class _Source:
    """Checkpoint tensors by TF-Slim name: ``shapes`` {name: shape} and ``get(name)``."""

    def __init__(self, shapes: Mapping[str, tuple], getter):
        self.shapes = dict(shapes)
        self.get = getter


def _object_source(net, prefix: str, reader) -> _Source:
    """Weights of the net inside an object-based ``tf.train.Checkpoint(model=net, ...)``.

    The checkpoint's object graph records each variable's Keras path (``full_name``, e.g.
    ``conv1_1/kernel``) next to its key; the net's name map turns paths into TF-Slim names,
    so everything after this (exclusions, error lists) works as for TF1 checkpoints. A
    variable whose path this net does not know is named ``<model>/[keras]<path>``.
    """
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(read_tensor(reader, prefix, _OBJECT_GRAPH_KEY))
    path_to_slim = net.checkpoint_name_map()
    all_shapes = reader.get_variable_to_shape_map()
    keys: dict[str, str] = {}
    for node in graph.nodes:
        for attr in node.attributes:
            if not attr.checkpoint_key.startswith(TRAINING_CHECKPOINT_KEY + "/"):
                continue  # optimizer, step counter, ...: not the net
            name = path_to_slim.get(attr.full_name,
                                    f"{net.model_name}/[keras]{attr.full_name}")
            keys[name] = attr.checkpoint_key
    if not keys:
        raise CheckpointMismatchError(
            f"{prefix}: object-based checkpoint holds no net under the key "
            f"'{TRAINING_CHECKPOINT_KEY}' (save it with "
            f"tf.train.Checkpoint({TRAINING_CHECKPOINT_KEY}=net, ...)).")
    shapes = {name: tuple(all_shapes[key]) for name, key in keys.items()}
    return _Source(shapes, lambda name: read_tensor(reader, prefix, keys[name]))


def _class_head_hint(net, wrong_shape: Sequence[tuple[str, tuple, tuple]],
                     ckpt_scope: str) -> str:
    """A hint when only class heads differ: 'heads are for N classes ... exclude ...'."""
    params = net.params
    heads = [w for w in wrong_shape if "_box/conv_cls/" in w[0]]
    if not heads or len(heads) != len(wrong_shape):
        return ""
    first_layer = f"{net.model_name}/{params.feat_layers[0]}_box/conv_cls/biases"
    ckpt_classes = None
    for name, ckpt_shape, _ in heads:
        if name == first_layer:
            ckpt_classes = ckpt_shape[0] // params.num_anchors_per_location[0]
    scopes = ",".join(f"{net.model_name}/{layer}_box" for layer in params.feat_layers)
    got = f"are for {ckpt_classes} classes" if ckpt_classes else "have another number of classes"
    return (f"The checkpoint's class heads {got}, this net has {params.num_classes} classes: "
            f"to fine-tune, leave the heads out with exclude_scopes / "
            f"--checkpoint_exclude_scopes={scopes}")


def load_checkpoint(net, path: str, model_scope: Optional[str] = None,
                    exclude_scopes: Sequence[str] | str = (),
                    ignore_missing_vars: bool = False) -> dict[str, list[str]]:
    """Assign the net's variables from a checkpoint, matched by TF-Slim name.

    Args:
      net: an SSD net (``variables_by_checkpoint_name()``, ``model_name``, ``params``).
      path: checkpoint prefix, one of its files, or a directory (its latest checkpoint).
      model_scope: the checkpoint's model scope when it differs from ``net.model_name``
        (the original's ``--checkpoint_model_scope``); ``'vgg_16'`` loads TF-Slim's ImageNet
        VGG-16 into the trunk (conv1..conv5; fc6/fc7 decimated into conv6/conv7) and leaves
        the extra blocks and heads at their initial values.
      exclude_scopes: comma-separated string or list of TF-Slim name prefixes of this net
        (e.g. ``'ssd_300_vgg/block4_box,ssd_300_vgg/block7_box'``) not to load.
      ignore_missing_vars: keep variables absent from the checkpoint at their current values
        and skip checkpoint variables the net does not have (both logged) instead of failing.

    Returns:
      ``{'loaded', 'missing', 'unexpected', 'excluded'}``: lists of TF-Slim names.

    Raises:
      FileNotFoundError: no checkpoint at ``path``.
      CheckpointMismatchError (a ValueError): variables missing, unexpected or of the wrong
        shape, listed by name (wrong shapes always fail: exclude those scopes to skip them).
    """
    prefix = resolve_checkpoint(path)
    excluded_scopes = split_scopes(exclude_scopes)
    variables = net.variables_by_checkpoint_name()
    reader = open_reader(prefix)

    if reader.has_tensor(_OBJECT_GRAPH_KEY):
        if model_scope not in (None, net.model_name):
            raise ValueError(f"{prefix}: model_scope={model_scope!r} applies to TF1 name-based "
                             "checkpoints only; this is an object-based training checkpoint.")
        source = _object_source(net, prefix, reader)
        ckpt_scope = net.model_name
    else:
        source = _Source({k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()},
                         lambda name: read_tensor(reader, prefix, name))
        ckpt_scope = model_scope or net.model_name
    vgg16 = ckpt_scope == VGG16_SCOPE

    # Map each of the net's names to the checkpoint name (and a transform for vgg_16 fc6/fc7).
    excluded, wanted = [], {}
    for name in variables:
        if in_scopes(name, excluded_scopes):
            excluded.append(name)
            continue
        relative = name[len(net.model_name) + 1:]
        if vgg16:
            scope = relative.split("/", 1)[0]
            if scope not in net.trunk_scopes:
                continue  # not part of VGG-16: stays at its initial value
            relative = relative.replace("conv6/", "fc6/", 1).replace("conv7/", "fc7/", 1)
        wanted[name] = f"{ckpt_scope}/{relative}"
    for scope in excluded_scopes:
        if not any(in_scopes(n, [scope]) for n in variables):
            logger.warning("exclude scope %r matches no variable of %s", scope, net.model_name)

    def transform(ckpt_name: str, ckpt_shape: tuple, var_shape: tuple):
        """Decimation of vgg_16 fc6/fc7 when the checkpoint holds the fully-connected sizes."""
        if vgg16 and ckpt_shape != var_shape:
            if ckpt_name.endswith("fc6/weights") and len(ckpt_shape) == 4 and ckpt_shape[:2] == (7, 7):
                return decimate_fc6
            if ckpt_name.endswith("fc7/weights") and len(ckpt_shape) == 4:
                return decimate_fc7
            if ckpt_name.endswith(("fc6/biases", "fc7/biases")) and len(ckpt_shape) == 1:
                return lambda b: b[::4]
        return None

    missing, wrong_shape, plan = [], [], []
    for name, ckpt_name in wanted.items():
        var_shape = tuple(variables[name].shape)
        if ckpt_name not in source.shapes:
            missing.append(name)
            continue
        ckpt_shape = source.shapes[ckpt_name]
        fn = transform(ckpt_name, ckpt_shape, var_shape)
        out_shape = ckpt_shape
        if fn is not None:  # the shape after decimation, from a zero-strided view (no memory)
            out_shape = tuple(fn(np.broadcast_to(np.zeros((), np.bool_), ckpt_shape)).shape)
        if out_shape != var_shape:
            wrong_shape.append((name, ckpt_shape, var_shape))
            continue
        plan.append((name, ckpt_name, fn))

    # Unexpected: checkpoint variables of the checkpoint's model scope that nothing uses,
    # except optimizer slots / moving averages of used variables (".../weights/Momentum").
    known = set(wanted.values()) | {f"{ckpt_scope}/{n[len(net.model_name) + 1:]}" for n in excluded}
    unexpected = []
    for ckpt_name in sorted(source.shapes):
        if not ckpt_name.startswith(ckpt_scope + "/") or ckpt_name in known:
            continue
        if ckpt_name.rsplit("/", 1)[0] in known:  # a slot of a known variable
            continue
        if vgg16 and in_scopes(ckpt_name, _VGG16_UNUSED):
            continue
        if vgg16 and ckpt_name.split("/")[1] not in ("fc6", "fc7") + net.trunk_scopes:
            continue
        unexpected.append(ckpt_name)

    if wrong_shape or ((missing or unexpected) and not ignore_missing_vars):
        lines = [f"{prefix}: checkpoint does not match {net.model_name} "
                 f"({len(missing)} missing, {len(unexpected)} unexpected, "
                 f"{len(wrong_shape)} wrong shape; checkpoint scope '{ckpt_scope}')."]
        lines += _listing("wrong shape", [f"{n} checkpoint {list(c)} net {list(v)}"
                                          for n, c, v in wrong_shape])
        lines += _listing("missing", missing)
        lines += _listing("unexpected", unexpected)
        metadata = read_metadata(prefix)
        if metadata and metadata.get("model_name") not in (None, net.model_name):
            lines.append(f"Its {SIDECAR_SUFFIX} says it is a {metadata['model_name']}, with "
                         f"{metadata.get('num_classes')} classes.")
        hint = _class_head_hint(net, wrong_shape, ckpt_scope)
        if hint:
            lines.append(hint)
        elif wrong_shape:
            lines.append("Wrongly shaped variables cannot be loaded: leave their scopes out with "
                         "exclude_scopes (--checkpoint_exclude_scopes).")
        if missing and len(missing) == len(wanted):
            scopes = [s for s in _scopes_in(source.shapes) if s != ckpt_scope]
            if scopes:
                lines.append(f"The checkpoint's variables are under scope(s) "
                             f"{', '.join(repr(s) for s in scopes[:5])}: pass model_scope / "
                             f"--checkpoint_model_scope={scopes[0]}.")
        elif (missing or unexpected) and not ignore_missing_vars:
            lines.append("Pass ignore_missing_vars=True (--ignore_missing_vars) to keep the "
                         "missing ones at their initial values and skip the unexpected ones.")
        raise CheckpointMismatchError("\n".join(lines), missing, unexpected, wrong_shape)

    for name, ckpt_name, fn in plan:
        value = np.asarray(source.get(ckpt_name))
        if fn is not None:
            value = fn(value)
        variables[name].assign(value.astype(np.float32, copy=False))
    for name in missing:
        logger.warning("%s: %s not in the checkpoint, left at its initial value", prefix, name)
    for name in unexpected:
        logger.warning("%s: checkpoint variable %s not used by %s", prefix, name, net.model_name)
    logger.info("Loaded %d variables of %s from %s", len(plan), net.model_name, prefix)
    return {"loaded": [p[0] for p in plan], "missing": missing, "unexpected": unexpected,
            "excluded": excluded}
