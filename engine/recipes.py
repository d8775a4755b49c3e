"""Training recipes: one flag (``--recipe``) that sets every default of a known recipe.

A recipe only fills settings the user left unset (``None``): an explicit flag always wins,
so ``--recipe=caffe_voc --optimizer=adam`` is the Caffe recipe with Adam.

``caffe_voc``: Caffe SSD's VOC0712 recipe (weiliu89/caffe ``examples/ssd/ssd_pascal.py`` and
  its ``solver.prototxt``), the one behind 77.2 mAP (SSD300) / 79.8 (SSD512) on VOC07 test:
  SGD momentum 0.9, base_lr 1e-3, ``multistep`` x0.1 at 80k and 100k, 120k iterations, batch
  32, weight decay 5e-4 on conv weights and on the conv4_3_norm scale (Caffe's default
  ``decay_mult: 1``), none on biases (``decay_mult: 0``), biases at twice the learning rate
  (``lr_mult: 2``); bipartite + per-prediction matching at 0.5, hard negatives mined per image
  at 3:1, loss normalized by the number of matched anchors (``normalization: VALID``); the
  Caffe augmentation (photometric distortions, zoom-out, 7 IoU-constrained batch samplers,
  flip); the VOC anchor sizes; the trunk initialised from TF-Slim's ImageNet vgg_16.ckpt
  (fc6/fc7 decimated into conv6/conv7). Plus one addition: a 1000-step linear warm-up (Caffe
  has none; heads initialised at random next to a pretrained trunk can blow up in the first
  steps at lr 1e-3, which is why mmdetection and others warm up).

``caffe_coco``: Caffe SSD's COCO recipe (weiliu89/caffe ``examples/ssd/ssd_coco.py``, the
  SSD300 COCO models trained on trainval35k): everything of ``caffe_voc`` (optimizer, decay,
  lr multipliers, matching, mining, normalization, augmentation, warm-up) with COCO's
  schedule, ``multistep`` x0.1 at 280k and 360k iterations, stop at 400k (its
  ``stepvalue: [280000, 360000, 400000]`` with ``max_iter: 400000``), base_lr 1e-3 at batch 32
  (``0.00004 * 25 / loc_weight``, loc_weight 1), and COCO's anchors, the ``coco_ft`` preset:
  SSD300 conv4_3 at 7%, then 15%..90% in steps of 18% (21, 45, 99, 153, 207, 261 / 45, 99,
  153, 207, 261, 315); SSD512 conv4_3 at 4%, then 10%..90% in steps of 16% (20.48, 51.2,
  133.12, 215.04, 296.96, 378.88, 460.8 / 51.2 ... 542.72), the SSD paper's COCO SSD512
  setting (s_min 0.1, 0.04 on conv4_3). weiliu89/caffe publishes no SSD512 COCO training
  script (issues #212, #288 ask for one), so SSD512 takes the SSD300 schedule. Crowd boxes are
  neither positives nor negatives (``tf_extended.targets``; ``ssd_coco.py`` itself trains
  with ``use_difficult_gt: false``).

``original``: balancap/SSD-Tensorflow's behaviour: its flag defaults (RMSProp, lr 0.01,
  exponential decay x0.94 every 2 epochs, batch 32, run until stopped), the weight decay of
  its README commands (5e-4), its matching (per-prediction only), batch-wide hard negative
  mining, loss divided by the batch size, its augmentation (one distorted-bbox crop, flip,
  colour) and its anchor sizes (the COCO/"_ft" ones). Its bugs are not reproduced (see
  docs/training.md, "Defaults that were bugs").
"""
from __future__ import annotations

import dataclasses
from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "caffe_voc": {
        "optimizer": "momentum",               # solver.prototxt momentum 0.9: --momentum's default
        "learning_rate": 1e-3,                 # solver.prototxt base_lr (batch 32)
        "learning_rate_decay_type": "piecewise",
        "learning_rate_boundaries": (80000, 100000),   # lr_policy multistep, stepvalue
        "learning_rate_values": (),            # learning_rate x gamma (0.1) ** i
        "warmup_steps": 1000,
        "weight_decay": 5e-4,                  # solver.prototxt weight_decay
        "bias_lr_mult": 2.0,                   # conv biases: param { lr_mult: 2 decay_mult: 0 }
        "decay_l2norm_scale": True,            # Normalize layer: default decay_mult 1
        "batch_size": 32,
        "max_number_of_steps": 120000,         # max_iter
        "matching": "caffe",
        "negative_mining": "per_image",
        "loss_normalization": "positives",     # MultiBoxLoss normalization: VALID
        "augmentation": "caffe",
        "anchor_preset": "voc",
    },
    "original": {
        "optimizer": "rmsprop",
        "learning_rate": 0.01,
        "learning_rate_decay_type": "exponential",
        "learning_rate_boundaries": (),
        "learning_rate_values": (),
        "warmup_steps": 0,
        "weight_decay": 5e-4,
        "bias_lr_mult": 1.0,
        "decay_l2norm_scale": False,
        "batch_size": 32,
        "max_number_of_steps": 0,              # 0: run until stopped, as the original
        "matching": "original",
        "negative_mining": "batch",
        "loss_normalization": "batch_size",
        "augmentation": "original",
        "anchor_preset": "coco_ft",
    },
    "caffe_coco": {
        "optimizer": "momentum",               # ssd_coco.py solver: momentum 0.9
        "learning_rate": 1e-3,                 # base_lr 0.00004 * 25 / loc_weight (1), batch 32
        "learning_rate_decay_type": "piecewise",
        "learning_rate_boundaries": (280000, 360000),  # lr_policy multistep, stepvalue
        "learning_rate_values": (),            # learning_rate x gamma (0.1) ** i
        "warmup_steps": 1000,
        "weight_decay": 5e-4,                  # weight_decay 0.0005
        "bias_lr_mult": 2.0,
        "decay_l2norm_scale": True,
        "batch_size": 32,
        "max_number_of_steps": 400000,         # max_iter
        "matching": "caffe",                   # PER_PREDICTION, overlap_threshold 0.5
        "negative_mining": "per_image",        # MAX_NEGATIVE, neg_pos_ratio 3
        "loss_normalization": "positives",     # normalization: VALID
        "augmentation": "caffe",               # the same samplers, distortions and expand
        "anchor_preset": "coco_ft",            # min_ratio 15 (SSD512: 10), 7% (4%) first layer
    },
}


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """The settings of ``recipe``; ValueError listing the valid names if unknown."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe={recipe!r} is not recognized; valid: {', '.join(RECIPES)}.")
    return dict(RECIPES[recipe])


def apply_recipe(config: Any, recipe: str | None = None) -> Any:
    """A copy of the dataclass ``config`` with every ``None`` field the recipe knows filled in.

    Args:
      config: a dataclass instance (``engine.train_config.TrainConfig``) with a ``recipe``
        field.
      recipe: overrides ``config.recipe``.
    """
    recipe = recipe or config.recipe
    values = recipe_defaults(recipe)
    updates: dict[str, Any] = {"recipe": recipe}
    for field in dataclasses.fields(config):
        if field.name in values and getattr(config, field.name) is None:
            updates[field.name] = values[field.name]
    return dataclasses.replace(config, **updates)

