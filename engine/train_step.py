"""One training step and what feeds it: the variables trained and decayed, the input
pipeline of each replica (``dataset_fn``), and the distributed step function.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional

import numpy as np
import tensorflow as tf

from engine import optimizers as opt_lib
from engine.errors import UsageError
from engine.train_config import TrainConfig, preprocessing_options
from nets.checkpoints import in_scopes, split_scopes
from preprocessing import pipeline, preprocessing_factory
from tf_extended import losses as losses_lib

logger = logging.getLogger(__name__)

# Every SSD net here takes the same input (RGB minus the means, DESIGN §5): a net without a
# preprocessing of its own uses this one.
_FALLBACK_PREPROCESSING = "ssd_300_vgg"


# ---------------------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------------------

def select_trainable(named: Mapping[str, Any], trainable_scopes: Optional[str]) -> list[str]:
    """Names of the variables to train: all trainable ones (not e.g. batch-norm moving
    statistics), or those under ``--trainable_scopes``.

    A scope that matches nothing is logged as a warning (listing the net's scopes).

    Raises:
      UsageError: no scope matches any variable (the message lists the net's scopes).
    """
    named = {n: v for n, v in named.items() if getattr(v, "trainable", True)}
    scopes = split_scopes(trainable_scopes)
    if not scopes:
        return list(named)
    tops = sorted({"/".join(n.split("/")[:2]) for n in named})
    selected = [n for n in named if in_scopes(n, scopes)]
    if not selected:
        raise UsageError(f"--trainable_scopes: {','.join(scopes)} matches no variable; this "
                         f"net's scopes are {', '.join(tops)}.")
    for scope in scopes:
        if not any(in_scopes(n, [scope]) for n in named):
            # E.g. block10/block11 of a net cut down by a small --train_image_size.
            logger.warning("--trainable_scopes: %r matches no variable of this net (scopes: "
                           "%s).", scope, ", ".join(tops))
    return selected


def weight_decay_names(net: Any, named: Mapping[str, Any], include_l2norm_scale: bool
                       ) -> list[str]:
    """TF-Slim names that get L2 weight decay: the net's ``weight_decay_variables()`` (conv
    kernels, what TF-Slim's ``l2_regularizer`` covered), plus the conv4_3 L2Normalization
    scale (``.../L2Normalization/gamma``) when ``include_l2norm_scale`` (Caffe decays it)."""
    decayed = {id(v) for v in net.weight_decay_variables()}
    return [n for n, v in named.items() if id(v) in decayed
            or (include_l2norm_scale and n.endswith("L2Normalization/gamma"))]


# ---------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------

def unpack_batch(batch: Any) -> tuple[tf.Tensor, dict, Optional[tf.Tensor]]:
    """A training batch -> (images, targets dict, image ids or None).

    Accepts ``(images, targets)`` (ids in ``targets['filename']``, as
    ``preprocessing.pipeline.train_dataset`` gives them), ``(images, targets, ids)`` or a dict
    with ``images``.
    """
    if isinstance(batch, Mapping):
        images = batch["images"] if "images" in batch else batch["image"]
        targets = {k: batch[k] for k in ("labels", "localisations", "scores")}
        ids = batch.get("image_ids", batch.get("ids", batch.get("filename")))
        return images, targets, ids
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    images, targets = batch
    ids = None
    if isinstance(targets, Mapping):
        ids = next((targets[k] for k in ("filename", "image_ids", "ids") if k in targets), None)
    return images, targets, ids


def make_dataset_fn(config: TrainConfig, spec: Any, params: Any, anchors: np.ndarray,
                    global_batch: int, seed: int
                    ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """``dataset_fn(input_context)`` for ``strategy.distribute_datasets_from_function``:
    reads ``spec``'s records, augments (``config.augmentation``), encodes the targets for
    ``anchors`` and batches ``global_batch`` split over the input pipelines."""
    name = config.preprocessing_name or config.model_name
    options = preprocessing_options(config.augmentation)
    try:
        preprocess_fn = preprocessing_factory.get_preprocessing(name, is_training=True, **options)
    except ValueError as err:
        if config.preprocessing_name:
            raise UsageError(f"--preprocessing_name: {err}") from None
        logger.info("No preprocessing registered for %s: using %s's.", name,
                    _FALLBACK_PREPROCESSING)
        preprocess_fn = preprocessing_factory.get_preprocessing(
            _FALLBACK_PREPROCESSING, is_training=True, **options)
    out_shape = tuple(int(s) for s in params.img_shape)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = ctx.get_per_replica_batch_size(global_batch)
        ds = spec.read(shuffle=not config.overfit_one_batch, seed=seed,
                       num_parallel_reads=config.num_readers, repeat=not config.overfit_one_batch)
        if ctx.num_input_pipelines > 1:
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        if config.overfit_one_batch:
            local = global_batch // ctx.num_input_pipelines
            ds = ds.repeat().take(local)
        # Each input pipeline draws its own augmentations: with one seed for all, the k-th
        # example of every pipeline would get the same crop, flip and colour draws.
        pipeline_seed = seed + 7919 * ctx.input_pipeline_id
        ds = pipeline.train_dataset(
            ds, preprocess_fn, anchors, batch, out_shape=out_shape, seed=pipeline_seed,
            encode_options={"matching": config.matching,
                            "match_threshold": config.match_threshold,
                            "prior_scaling": tuple(params.prior_scaling)},
            num_parallel_calls=config.num_preprocessing_threads, drop_remainder=True)
        if config.overfit_one_batch:
            num_batches = max(1, (global_batch // ctx.num_input_pipelines) // batch)
            ds = ds.take(num_batches).cache().repeat()
        return ds

    return dataset_fn


# ---------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------

def make_train_step(config: TrainConfig, strategy: tf.distribute.Strategy, net: Any,
                    optimizer: Any, trainable: list, l2_vars: list, bias_ids: set,
                    ema: Optional[opt_lib.ExponentialMovingAverage], step_var: tf.Variable,
                    num_replicas: int) -> Callable:
    """The distributed training step: ``step_fn(batch, control) -> (losses, control)``.

    ``losses`` are the global-batch values (per-replica contributions summed); ``control``
    holds [save requested, stop requested] summed over all replicas, so every worker of a
    multi-worker run takes the same decision after the same step.

    Args:
      trainable: the variables to train; ``l2_vars`` those of them with L2 decay in the loss;
        ``bias_ids``: ``id()`` of those that get ``--bias_lr_mult``.
      ema: the moving average to update after each step, or None.
      step_var: the global step, incremented by each step.
    """
    bias_mult = float(config.bias_lr_mult or 1.0)
    float16 = config.mixed_precision == "float16"
    weight_decay = float(config.weight_decay or 0.0)
    loss_kwargs = dict(negative_ratio=config.negative_ratio, alpha=config.loss_alpha,
                       mining=config.negative_mining, match_threshold=config.match_threshold,
                       normalization=config.loss_normalization)

    def compute(images, targets, normalizer_local, normalizer_global):
        with tf.GradientTape() as tape:
            out = net(images, training=True)
            flat = net.flat_outputs(out)
            det = losses_lib.ssd_losses(
                flat["logits"], flat["localisations"], targets["labels"],
                targets["localisations"], targets["scores"], **loss_kwargs)
            # ssd_losses normalizes by this replica's count; rescale so that summing the
            # replicas' contributions gives the loss of the global batch.
            scale = normalizer_local / normalizer_global
            contrib = {k: tf.cast(v, tf.float32) * scale for k, v in det.items()
                       if k in ("cross_entropy_pos", "cross_entropy_neg", "localization")}
            detection = tf.add_n(list(contrib.values()))
            reg = opt_lib.l2_regularization(l2_vars, weight_decay) / float(num_replicas)
            total = detection + reg
            objective = optimizer.scale_loss(total) if float16 else total
        grads = tape.gradient(objective, trainable)
        contrib["regularization"] = reg
        contrib["total"] = total
        return contrib, grads

    compute_fn = tf.function(compute, jit_compile=True) if config.jit_compile else compute

    def replica_step(images, targets, control):
        ctx = tf.distribute.get_replica_context()
        labels = targets["labels"]
        local_batch = tf.cast(tf.shape(labels)[0], tf.float32)
        if config.loss_normalization == "positives":
            count = tf.reduce_sum(tf.cast(labels > 0, tf.float32))
            local = tf.maximum(count, 1.0)
            global_ = tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, count), 1.0)
        else:
            local = local_batch
            global_ = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_batch)
        contrib, grads = compute_fn(images, targets, local, global_)
        if bias_mult != 1.0:
            # Caffe lr_mult 2 on biases: with plain/momentum SGD, scaling the gradient is
            # exactly a doubled learning rate for these variables.
            grads = [g * bias_mult if id(v) in bias_ids and g is not None else g
                     for g, v in zip(grads, trainable)]
        if float16 and num_replicas > 1:
            # LossScaleOptimizer checks the first replica's local gradients only; make a
            # non-finite gradient anywhere visible to every replica.
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads
                                    if g is not None])
            bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
            factor = tf.where(bad > 0, tf.constant(float("nan")), tf.constant(1.0))
            grads = [g * factor if g is not None else g for g in grads]
        optimizer.apply(grads, trainable)
        # tf.identity: a per-replica copy (all_reduce rejects a tensor shared by replicas).
        control = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(control))
        return contrib, control

    @tf.function
    def step_fn(batch, control):
        images, targets, _ = unpack_batch(batch)
        targets = {k: targets[k] for k in ("labels", "localisations", "scores")}
        contrib, ctl = strategy.run(replica_step, args=(images, targets, control))
        if ema is not None:
            ema.update(step_var)
        step_var.assign_add(1)
        losses = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                  for k, v in contrib.items()}
        ctl = strategy.experimental_local_results(ctl)[0]
        return losses, ctl

    return step_fn
