"""Train an SSD network on a TFRecord dataset (TensorFlow 2, tf.distribute, resumable).

Same command and flags as balancap/SSD-Tensorflow's train_ssd_network.py; defaults that were
bugs there are fixed (docs/training.md lists each). --recipe=caffe_voc (default) gives the
Caffe SSD reference recipe, --recipe=original the original project's behaviour; any flag given
explicitly overrides the recipe.

    python train_ssd_network.py --train_dir=logs/ssd_300 --dataset_dir=tfrecords \\
        --dataset_name=pascalvoc_0712 --dataset_split_name=trainval \\
        --model_name=ssd_300_vgg --checkpoint_path=checkpoints/vgg_16.ckpt

Running the same command again resumes from the last checkpoint in --train_dir.
--batch_size is the GLOBAL batch: it is split over all replicas (GPUs, workers).
Exit codes: 0 done, 2 usage error, 1 data error (or a NaN/inf loss), 128+N stopped by signal N
(after saving a checkpoint).
"""
from __future__ import annotations

import logging as py_logging
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags, logging  # noqa: E402

from cli import app  # noqa: E402
from cli.flags import (config_from_flags, define_dataset_flags, define_device_flags,  # noqa: E402
                       define_model_flags)
from engine import optimizers as opt_lib  # noqa: E402
from engine import recipes, training  # noqa: E402
from engine.train_config import AUGMENTATIONS, TrainConfig  # noqa: E402
from tf_extended.losses import MINING_MODES, NORMALIZATIONS  # noqa: E402
from tf_extended.targets import MATCHING_MODES  # noqa: E402

FLAGS = flags.FLAGS

# =========================================================================== #
# Shared groups: dataset, model, devices (cli/flags.py).
# =========================================================================== #
define_dataset_flags("train")
define_model_flags("ssd_300_vgg",
                   anchor_default_help="from --recipe (caffe_voc: voc; caffe_coco, original: "
                   "coco_ft)",
                   num_classes_default_help="the dataset's, 21 for VOC; a different value is "
                   "an error")
define_device_flags("Compute in bfloat16 or float16 (variables stay float32). float16 uses "
                    "dynamic loss scaling (keras.optimizers.LossScaleOptimizer).")

# =========================================================================== #
# SSD network flags.
# =========================================================================== #
flags.DEFINE_float("loss_alpha", 1.0, "Weight of the localisation (smooth L1) loss.")
flags.DEFINE_float("negative_ratio", 3.0, "Hard negative mining: negatives per positive.")
flags.DEFINE_float("match_threshold", 0.5,
                   "IoU above which an anchor is matched to a ground-truth box (positive).")
flags.DEFINE_enum("matching", None, list(MATCHING_MODES),
                  "Target matching: 'caffe' = bipartite (each box takes its best anchor) + "
                  "per-prediction IoU > match_threshold; 'original' = per-prediction only, as "
                  "balancap/SSD-Tensorflow. Default: from --recipe (caffe_voc: caffe; "
                  "original: original).")
flags.DEFINE_enum("negative_mining", None, list(MINING_MODES),
                  "Hard negative mining per image (Caffe) or over the whole batch (original). "
                  "Default: from --recipe.")
flags.DEFINE_enum("loss_normalization", None, list(NORMALIZATIONS),
                  "Divide the loss by the number of matched anchors (Caffe, 'positives') or by "
                  "the batch size (original, 'batch_size'). Default: from --recipe.")

# =========================================================================== #
# General flags.
# =========================================================================== #
flags.DEFINE_string("train_dir", "/tmp/tfmodel/",
                    "Directory where checkpoints, summaries and config.json are written; "
                    "training resumes from its last checkpoint.")
flags.DEFINE_integer("num_clones", 1,
                     "Number of model replicas (GPUs) for MirroredStrategy. With no GPU or "
                     "--clone_on_cpu, the CPU is split into this many logical devices.")
flags.DEFINE_boolean("clone_on_cpu", False, "Place the replicas on (logical) CPUs.")
flags.DEFINE_integer("num_readers", 4, "Number of TFRecord files read in parallel.")
flags.DEFINE_integer("num_preprocessing_threads", 4,
                     "Parallel calls of the preprocessing + target encoding map.")
flags.DEFINE_integer("log_every_n_steps", 10, "Log a line every this many steps.")
flags.DEFINE_integer("save_summaries_secs", 600,
                     "Write TensorBoard summaries every this many seconds.")
flags.DEFINE_integer("save_interval_secs", 600, "Save a checkpoint every this many seconds.")
flags.DEFINE_integer("keep_checkpoint_max", 5, "Number of recent checkpoints kept in train_dir.")
flags.DEFINE_enum("recipe", "caffe_voc", list(recipes.RECIPES),
                  "Recipe that sets the defaults of the flags marked 'from --recipe': "
                  "'caffe_voc' (Caffe SSD's VOC recipe: SGD momentum 0.9, lr 1e-3 x0.1 at 80k "
                  "and 100k, 120k steps, batch 32, weight decay 5e-4, Caffe matching, mining "
                  "and augmentation, 'voc' anchors), 'caffe_coco' (Caffe SSD's COCO recipe: the "
                  "same with lr x0.1 at 280k and 360k, 400k steps, 'coco_ft' anchors) or "
                  "'original' (balancap/SSD-Tensorflow: "
                  "RMSProp, lr 0.01 x0.94 every 2 epochs, original matching, batch-wide mining, "
                  "its augmentation, 'coco_ft' anchors).")
flags.DEFINE_boolean("jit_compile", False, "Compile the forward/backward pass with XLA.")
flags.DEFINE_integer("seed", 0, "Random seed (weights initialisation, data order, augmentation).")

# =========================================================================== #
# Optimization flags.
# =========================================================================== #
flags.DEFINE_float("weight_decay", None,
                   "L2 weight decay: adds weight_decay * w to the gradient of each conv kernel "
                   "(loss + weight_decay * sum(w^2) / 2, as Caffe and TF-Slim). For adamw, the "
                   "decoupled decay rate. Default: from --recipe (5e-4; the original's code "
                   "default was 4e-5).")
flags.DEFINE_float("bias_lr_mult", None,
                   "Gradient multiplier for biases (Caffe's lr_mult: 2). Default: from --recipe "
                   "(caffe_voc: 2; original: 1).")
flags.DEFINE_boolean("decay_l2norm_scale", None,
                     "Also weight-decay the conv4_3 L2Normalization scale (Caffe does). "
                     "Default: from --recipe.")
flags.DEFINE_enum("optimizer", None, list(opt_lib.OPTIMIZERS),
                  "The optimizer. Default: from --recipe (caffe_voc: momentum; original: rmsprop).")
flags.DEFINE_float("adadelta_rho", 0.95, "The decay rate for adadelta.")
flags.DEFINE_float("adagrad_initial_accumulator_value", 0.1,
                   "Starting value for the AdaGrad accumulators.")
flags.DEFINE_float("adam_beta1", 0.9, "Exponential decay rate of the 1st moment (adam, adamw).")
flags.DEFINE_float("adam_beta2", 0.999, "Exponential decay rate of the 2nd moment (adam, adamw).")
flags.DEFINE_float("opt_epsilon", 1e-8,
                   "Epsilon of adadelta, adam, adamw and rmsprop (the original's 1.0 made Adam "
                   "crawl).")
flags.DEFINE_float("ftrl_learning_rate_power", -0.5, "The learning rate power (ftrl).")
flags.DEFINE_float("ftrl_initial_accumulator_value", 0.1,
                   "Starting value for the FTRL accumulators.")
flags.DEFINE_float("ftrl_l1", 0.0, "The FTRL l1 regularization strength.")
flags.DEFINE_float("ftrl_l2", 0.0, "The FTRL l2 regularization strength.")
flags.DEFINE_float("momentum", 0.9, "The momentum of the 'momentum' optimizer.")
flags.DEFINE_float("rmsprop_momentum", 0.9, "Momentum of rmsprop.")
flags.DEFINE_float("rmsprop_decay", 0.9, "Decay term (rho) of rmsprop.")
flags.DEFINE_float("moving_average_decay", None,
                   "If set, keep an exponential moving average of the weights with this decay "
                   "(e.g. 0.9999); the checkpoints' 'model' (what eval reads) holds the "
                   "averaged weights.")

# =========================================================================== #
# Learning rate flags.
# =========================================================================== #
flags.DEFINE_enum("learning_rate_decay_type", None, list(opt_lib.DECAY_TYPES),
                  "How the learning rate decays: fixed; exponential (staircase, x decay_factor "
                  "every num_epochs_per_decay epochs); polynomial (linear to end_learning_rate "
                  "over num_epochs_per_decay epochs); piecewise (Caffe multistep: "
                  "learning_rate_values between learning_rate_boundaries); cosine (to "
                  "end_learning_rate at max_number_of_steps). Default: from --recipe "
                  "(caffe_voc: piecewise; original: exponential).")
flags.DEFINE_float("learning_rate", None,
                   "Initial learning rate (after warm-up). Default: from --recipe (caffe_voc: "
                   "1e-3; original: 0.01).")
flags.DEFINE_float("end_learning_rate", 0.0001,
                   "Final learning rate of the polynomial and cosine schedules.")
flags.DEFINE_float("label_smoothing", 0.0,
                   "Kept from the original, which ignored it; only 0 is accepted.")
flags.DEFINE_float("learning_rate_decay_factor", 0.94, "Learning rate decay factor (exponential).")
flags.DEFINE_float("num_epochs_per_decay", 2.0,
                   "Epochs after which the learning rate decays (exponential, polynomial).")
flags.DEFINE_list("learning_rate_boundaries", None,
                  "Steps at which the piecewise learning rate changes, e.g. 80000,100000. "
                  "Default: from --recipe.")
flags.DEFINE_list("learning_rate_values", None,
                  "Piecewise learning rates, one more than the boundaries (default: "
                  "learning_rate x 0.1^i, Caffe's gamma).")
flags.DEFINE_integer("warmup_steps", None,
                     "Linear learning-rate warm-up over this many steps (0: none). Default: "
                     "from --recipe (caffe_voc: 1000; original: 0).")

# =========================================================================== #
# Dataset flags (besides the shared group).
# =========================================================================== #
flags.DEFINE_integer("num_samples", None,
                     "Examples per epoch (default: counted from the TFRecord files).")
flags.DEFINE_integer("labels_offset", 0,
                     "Offset of the labels (kept from the original, which ignored it; must "
                     "be 0).")
flags.DEFINE_enum("augmentation", None, list(AUGMENTATIONS),
                  "Training augmentation: Caffe SSD's (photometric, zoom-out, IoU-constrained "
                  "crops, flip), the original's, or none (warp resize only). Default: from "
                  "--recipe.")
flags.DEFINE_integer("batch_size", None,
                     "GLOBAL batch size: images per step over all replicas and workers. "
                     "Default: from --recipe (32).")
flags.DEFINE_integer("train_image_size", None,
                     "Network input size (default: the model's, e.g. 300). Smaller sizes "
                     "drop the feature layers that would be empty (for quick tests).")
flags.DEFINE_integer("max_number_of_steps", None,
                     "Number of training steps (0: until stopped). Default: from --recipe "
                     "(caffe_voc: 120000; original: 0).")
flags.DEFINE_boolean("overfit_one_batch", False,
                     "Debug aid: train on the first batch only, repeated (the loss must fall).")

# =========================================================================== #
# Fine-tuning flags.
# =========================================================================== #
flags.DEFINE_string("checkpoint_path", None,
                    "Checkpoint (file or directory) to initialise from. Used only when "
                    "train_dir holds no checkpoint yet (the log says which one is used).")
flags.DEFINE_string("checkpoint_model_scope", None,
                    "Model scope in the checkpoint when it differs from model_name (e.g. "
                    "vgg_16: conv1..conv5 by name, fc6/fc7 decimated into conv6/conv7). Default: "
                    "detected (vgg_16 for TF-Slim's ImageNet VGG-16).")
flags.DEFINE_string("checkpoint_exclude_scopes", None,
                    "Comma-separated TF-Slim scopes not to load from checkpoint_path, e.g. "
                    "ssd_300_vgg/block4_box,ssd_300_vgg/block7_box.")
flags.DEFINE_string("trainable_scopes", None,
                    "Comma-separated TF-Slim scopes to train; default: all variables.")
flags.DEFINE_boolean("ignore_missing_vars", False,
                     "When loading checkpoint_path, keep variables it lacks at their initial "
                     "values instead of failing.")
flags.DEFINE_boolean("export_tf1_checkpoint", True,
                     "At the end, also write train_dir/export/model.ckpt-<step> with TF-Slim "
                     "variable names.")


def _numbers(name: str, kind: type) -> tuple | None:
    """A comma-separated list flag as a tuple of ``kind`` (None when not given)."""
    values = getattr(FLAGS, name)
    if values is None:
        return None
    try:
        return tuple(kind(v) for v in values if str(v).strip())
    except ValueError:
        raise app.UsageError(f"--{name}: expected comma-separated numbers, got "
                             f"{','.join(values)!r}") from None


def main(argv: list[str]) -> int:
    del argv
    logging.set_verbosity(logging.INFO)
    py_logging.getLogger().setLevel(py_logging.INFO)
    config = config_from_flags(
        TrainConfig,
        # TrainConfig's "not given" for these is '' (validate() then names the flag).
        dataset_name=FLAGS.dataset_name or "", dataset_dir=FLAGS.dataset_dir or "",
        learning_rate_boundaries=_numbers("learning_rate_boundaries", int),
        learning_rate_values=_numbers("learning_rate_values", float))
    result = training.train(config)
    if result.stopped_by:
        try:
            return 128 + int(getattr(signal, result.stopped_by))
        except (AttributeError, TypeError, ValueError):
            return 1  # Stopped because another worker got a signal.
    return 0


if __name__ == "__main__":
    app.run(main)
