"""Unit tests of the training engine: schedules, optimizers, weight decay, moving average,
recipes, scopes, checkpoint scope detection, the checkpoint keeper, summaries (hand-computed
values)."""
from __future__ import annotations

import dataclasses
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from engine import checkpoint_keeper, recipes, train_config, train_step, training
from engine import optimizers as opt_lib
from engine.errors import DataError, NonFiniteLossError, UsageError
from engine.train_config import TrainConfig, validate
from fileio import atomic
from nets import checkpoints as ckpt_lib
from nets import configure


# ---------------------------------------------------------------------------------------
# Learning-rate schedules (golden values by hand)
# ---------------------------------------------------------------------------------------

def _lr(schedule, step: int) -> float:
    return float(schedule(tf.constant(step, tf.int64)))


def test_decay_steps_is_the_originals_formula():
    # int(5011 / 32 * 2.0) = int(313.1875)
    assert opt_lib.decay_steps_per_period(5011, 32, 2.0) == 313
    assert opt_lib.decay_steps_per_period(10, 32, 2.0) == 1  # never 0


def test_exponential_is_staircase():
    s = opt_lib.StaircaseExponentialDecay(0.01, 100, 0.94)
    assert _lr(s, 0) == pytest.approx(0.01)
    assert _lr(s, 99) == pytest.approx(0.01)
    assert _lr(s, 100) == pytest.approx(0.0094)
    assert _lr(s, 250) == pytest.approx(0.01 * 0.94 ** 2)


def test_polynomial_is_linear_then_flat():
    s = opt_lib.LinearPolynomialDecay(0.01, 100, 1e-4)
    assert _lr(s, 0) == pytest.approx(0.01)
    assert _lr(s, 50) == pytest.approx(0.00505)
    assert _lr(s, 100) == pytest.approx(1e-4)
    assert _lr(s, 1000) == pytest.approx(1e-4)


def test_piecewise_changes_at_the_boundary_like_caffe_multistep():
    s = opt_lib.MultiStepDecay((80000, 100000), (1e-3, 1e-4, 1e-5))
    assert _lr(s, 0) == pytest.approx(1e-3)
    assert _lr(s, 79999) == pytest.approx(1e-3)
    assert _lr(s, 80000) == pytest.approx(1e-4)
    assert _lr(s, 99999) == pytest.approx(1e-4)
    assert _lr(s, 100000) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="one more value"):
        opt_lib.MultiStepDecay((10,), (1.0,))


def test_piecewise_values_default_to_caffe_gamma():
    settings = opt_lib.LearningRateSettings(decay_type="piecewise", learning_rate=2e-3,
                                            boundaries=(10, 20))
    s = opt_lib.build_learning_rate(settings, num_samples_per_epoch=100, global_batch_size=10)
    assert [_lr(s, t) for t in (0, 10, 20)] == pytest.approx([2e-3, 2e-4, 2e-5])


def test_cosine_after_warmup_and_linear_warmup():
    s = opt_lib.CosineDecaySchedule(1.0, 100, 0.0, start_step=10)
    assert _lr(s, 10) == pytest.approx(1.0)
    assert _lr(s, 60) == pytest.approx(0.5)
    assert _lr(s, 110) == pytest.approx(0.0, abs=1e-7)
    assert _lr(s, 500) == pytest.approx(0.0, abs=1e-7)
    w = opt_lib.LinearWarmup(opt_lib.ConstantSchedule(1e-3), 1000, start_factor=0.001)
    assert _lr(w, 0) == pytest.approx(1e-6)
    assert _lr(w, 500) == pytest.approx(1e-3 * (0.001 + 0.999 * 0.5))
    assert _lr(w, 1000) == pytest.approx(1e-3)
    assert _lr(w, 5000) == pytest.approx(1e-3)
    settings = opt_lib.LearningRateSettings(decay_type="cosine", learning_rate=1.0,
                                            warmup_steps=10, end_learning_rate=0.0)
    built = opt_lib.build_learning_rate(settings, num_samples_per_epoch=1, global_batch_size=1,
                                        max_steps=110)
    assert _lr(built, 60) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_number_of_steps"):
        opt_lib.build_learning_rate(settings, num_samples_per_epoch=1, global_batch_size=1)


def test_unknown_decay_type_lists_the_valid_ones():
    settings = opt_lib.LearningRateSettings(decay_type="step")
    with pytest.raises(ValueError, match="fixed, exponential, polynomial, piecewise, cosine"):
        opt_lib.build_learning_rate(settings, num_samples_per_epoch=1, global_batch_size=1)


# ---------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [
    ("adadelta", "Adadelta"), ("adagrad", "Adagrad"), ("adam", "Adam"), ("adamw", "AdamW"),
    ("ftrl", "Ftrl"), ("momentum", "SGD"), ("rmsprop", "RMSprop"), ("sgd", "SGD")])
def test_every_original_optimizer_and_adamw(name, cls):
    settings = opt_lib.OptimizerSettings(name=name, weight_decay=0.05)
    optimizer = opt_lib.build_optimizer(settings, 0.1)
    assert type(optimizer).__name__ == cls
    if name in ("adam", "adamw", "rmsprop", "adadelta"):
        assert optimizer.epsilon == 1e-8
    if name == "rmsprop":
        assert optimizer.rho == 0.9 and optimizer.momentum == 0.9
    if name == "momentum":
        assert optimizer.momentum == 0.9
    if name == "sgd":
        assert optimizer.momentum == 0.0
    if name == "adamw":
        assert optimizer.weight_decay == 0.05
    with pytest.raises(ValueError, match="adadelta, adagrad, adam, adamw, ftrl, momentum"):
        opt_lib.build_optimizer(dataclasses.replace(settings, name="nadam"), 0.1)


def test_momentum_update_is_caffes():
    # Caffe: v = m*v - lr*g; w += v. w=1, g=1 (loss w), lr 0.1, m 0.9:
    # step 1: v=-0.1, w=0.9; step 2: v=-0.19, w=0.71.
    w = tf.Variable(1.0)
    optimizer = opt_lib.build_optimizer(opt_lib.OptimizerSettings(name="momentum"), 0.1)
    optimizer.apply([tf.constant(1.0)], [w])
    assert float(w) == pytest.approx(0.9)
    optimizer.apply([tf.constant(1.0)], [w])
    assert float(w) == pytest.approx(0.71)


def test_l2_regularization_is_half_sum_of_squares_and_gradient_wd_w():
    a = tf.Variable([1.0, 2.0])
    b = tf.Variable([[3.0]])
    with tf.GradientTape() as tape:
        reg = opt_lib.l2_regularization([a, b], 0.1)
    assert float(reg) == pytest.approx(0.1 * (1 + 4 + 9) / 2)
    ga, gb = tape.gradient(reg, [a, b])
    np.testing.assert_allclose(ga, [0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(gb, [[0.3]], rtol=1e-6)
    assert float(opt_lib.l2_regularization([a], 0.0)) == 0.0


def test_moving_average_follows_tf_rule_with_num_updates():
    v = tf.Variable(1.0)
    ema = opt_lib.ExponentialMovingAverage([v], 0.9)
    assert float(ema.shadows[0]) == 1.0  # starts at the variable
    v.assign(3.0)
    ema.update(tf.constant(0))   # d = min(0.9, 1/10) = 0.1: 1 - 0.9 * (1 - 3) = 2.8
    assert float(ema.shadows[0]) == pytest.approx(2.8)
    v.assign(5.0)
    ema.update(tf.constant(100))  # d = min(0.9, 101/110) = 0.9: 2.8 - 0.1 * (2.8 - 5) = 3.02
    assert float(ema.shadows[0]) == pytest.approx(3.02)
    with pytest.raises(ValueError, match="moving_average_decay"):
        opt_lib.ExponentialMovingAverage([v], 1.0)


# ---------------------------------------------------------------------------------------
# Recipes and configuration
# ---------------------------------------------------------------------------------------

def test_recipe_fills_only_unset_fields():
    config = TrainConfig(dataset_name="voc", dataset_dir="x", optimizer="adam").resolved()
    assert config.optimizer == "adam"                 # explicit wins
    assert config.learning_rate == 1e-3 and config.weight_decay == 5e-4
    assert config.learning_rate_decay_type == "piecewise"
    assert config.learning_rate_boundaries == (80000, 100000)
    assert config.max_number_of_steps == 120000 and config.batch_size == 32
    assert config.matching == "caffe" and config.anchor_preset == "voc"
    original = TrainConfig(recipe="original").resolved()
    assert original.optimizer == "rmsprop" and original.learning_rate == 0.01
    assert original.learning_rate_decay_type == "exponential"
    assert original.matching == "original" and original.negative_mining == "batch"
    assert original.loss_normalization == "batch_size" and original.anchor_preset == "coco_ft"
    with pytest.raises(UsageError, match="caffe_voc, original"):
        TrainConfig(recipe="yolo").resolved()
    assert set(recipes.RECIPES["caffe_voc"]) == set(recipes.RECIPES["original"])


def test_every_recipe_entry_is_a_setting_it_can_fill():
    """A recipe fills only fields left None: an entry for a field with another default (the
    'momentum' entries once) would never apply."""
    fillable = {f.name for f in dataclasses.fields(TrainConfig) if f.default is None}
    for name, values in recipes.RECIPES.items():
        assert set(values) <= fillable, (name, set(values) - fillable)
    assert not hasattr(recipes, "describe") and not hasattr(recipes, "RECIPE_NAMES")


def test_choice_lists_are_the_librarys():
    from tf_extended import losses, targets

    for field, valid in (("matching", targets.MATCHING_MODES),
                         ("negative_mining", losses.MINING_MODES),
                         ("loss_normalization", losses.NORMALIZATIONS),
                         ("augmentation", train_config.AUGMENTATIONS)):
        for value in valid:
            validate(dataclasses.replace(TrainConfig(dataset_name="voc", dataset_dir="d"),
                                         **{field: value}).resolved())
        bad = dataclasses.replace(TrainConfig(dataset_name="voc", dataset_dir="d"),
                                  **{field: "nope"}).resolved()
        with pytest.raises(UsageError, match=f"--{field}='nope' is not recognized; valid: "
                                             f"{', '.join(valid)}"):
            validate(bad)
    assert train_config.preprocessing_options("original") == {"chain": "original"}
    assert train_config.preprocessing_options("none")["samplers"] is None
    with pytest.raises(UsageError, match="--augmentation='extreme'"):
        train_config.preprocessing_options("extreme")


@pytest.mark.parametrize("changes, message", [
    ({"dataset_name": ""}, "--dataset_name is required"),
    ({"labels_offset": 1}, "--labels_offset=1"),
    ({"label_smoothing": 0.1}, "not implemented"),
    ({"learning_rate_boundaries": ()}, "needs --learning_rate_boundaries"),
    ({"learning_rate_values": (1.0,)}, "needs 3 values"),
    ({"mixed_precision": "int8"}, "--mixed_precision"),
    ({"batch_size": 0}, "--batch_size must be >= 1"),
])
def test_validate_names_the_flag(changes, message):
    config = dataclasses.replace(TrainConfig(dataset_name="voc", dataset_dir="d"),
                                 **changes).resolved()
    with pytest.raises(UsageError, match=message):
        validate(config)


def test_nonfinite_error_names_step_losses_and_images():
    err = NonFiniteLossError(17, {"total": float("nan"), "localization": 1.5},
                             ["img_1", "img_2"])
    assert str(err).startswith("non-finite loss at step 17 (total=nan, localization=1.5); "
                               "images of the batch: [img_1, img_2].")
    assert err.exit_code == 1


# ---------------------------------------------------------------------------------------
# Scopes, network params, checkpoint scope detection
# ---------------------------------------------------------------------------------------

class _Var:
    def __init__(self, trainable: bool = True):
        self.trainable = trainable


def test_trainable_scopes_match_whole_path_components(caplog):
    named = {n: _Var() for n in ("ssd_300_vgg/block1/conv/weights",
                                 "ssd_300_vgg/block10/conv/weights",
                                 "ssd_300_vgg/block10_box/conv_cls/biases")}
    named["ssd_300_vgg/bn/moving_mean"] = _Var(trainable=False)
    assert train_step.select_trainable(named, None) == list(named)[:3]
    assert train_step.select_trainable(named, "ssd_300_vgg/block1") == [
        "ssd_300_vgg/block1/conv/weights"]
    assert train_step.select_trainable(named, " ssd_300_vgg/block10/ , ssd_300_vgg/block10_box") \
        == list(named)[1:3]
    with pytest.raises(UsageError, match="matches no variable; this net's scopes are "
                                                  "ssd_300_vgg/block1, ssd_300_vgg/block10"):
        train_step.select_trainable(named, "ssd_300_vgg/conv9,ssd_300_vgg/conv8")
    caplog.set_level("WARNING")
    assert train_step.select_trainable(named, "ssd_300_vgg/conv9,ssd_300_vgg/block1") == [
        "ssd_300_vgg/block1/conv/weights"]
    assert "'ssd_300_vgg/conv9' matches no variable" in caplog.text


def test_weight_decay_covers_kernels_and_optionally_the_l2norm_scale():
    kernel, bias, gamma = _Var(), _Var(), _Var()

    class Net:
        def weight_decay_variables(self):
            return [kernel]

    named = {"m/conv/weights": kernel, "m/conv/biases": bias,
             "m/block4_box/L2Normalization/gamma": gamma}
    assert train_step.weight_decay_names(Net(), named, False) == ["m/conv/weights"]
    assert train_step.weight_decay_names(Net(), named, True) == [
        "m/conv/weights", "m/block4_box/L2Normalization/gamma"]


def _train_params(num_classes, image_size, anchor_preset):
    """The params train() builds (nets.configure.resolve_model, no checkpoint)."""
    return configure.resolve_model("ssd_300_vgg", num_classes=num_classes,
                                   anchor_preset=anchor_preset, image_size=image_size,
                                   drop_empty_layers=True)[1]


def test_small_train_image_size_keeps_the_feature_layers_that_fit():
    from nets import nets_factory

    base = nets_factory.get_network("ssd_300_vgg").default_params
    p64 = _train_params(5, 64, None)
    assert p64.feat_layers == ("block4", "block7", "block8", "block9")
    assert p64.feat_shapes == ((8, 8), (4, 4), (2, 2), (1, 1))
    assert [b.name for b in p64.extra_blocks] == ["block8", "block9"]
    assert p64.anchor_sizes == base.anchor_sizes[:4] and p64.num_classes == 5
    p300 = _train_params(21, None, "coco_ft")
    assert p300.feat_layers == base.feat_layers and p300.anchor_preset == "coco_ft"
    assert p300.anchor_sizes[0] == (21.0, 45.0)
    # A usage error (exit code 2) naming the flag; train() re-raises it as UsageError.
    with pytest.raises(configure.SettingsError, match="--anchor_preset") as err:
        _train_params(21, None, "kitti")
    assert err.value.exit_code == UsageError.exit_code == 2


def _write_tf1(prefix: str, names: list[str]) -> str:
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.zeros([1]) for _ in names])
    return prefix


def test_checkpoint_model_scope_detection(tmp_path, caplog):
    vgg = _write_tf1(str(tmp_path / "vgg_16.ckpt"), ["vgg_16/conv1/conv1_1/weights",
                                                    "vgg_16/fc8/biases", "global_step"])
    ssd = _write_tf1(str(tmp_path / "ssd.ckpt"), ["ssd_300_vgg/conv1/conv1_1/weights"])
    other = _write_tf1(str(tmp_path / "other.ckpt"), ["resnet/conv1/weights"])
    assert ckpt_lib.resolve_model_scope(vgg, "ssd_300_vgg", None) == "vgg_16"
    assert ckpt_lib.resolve_model_scope(ssd, "ssd_300_vgg", None) is None
    assert ckpt_lib.resolve_model_scope(other, "ssd_300_vgg", None) is None
    assert ckpt_lib.resolve_model_scope(other, "ssd_300_vgg", "resnet") == "resnet"
    caplog.set_level("WARNING")
    # The original README's stage 2: --checkpoint_model_scope=vgg_16 on an SSD checkpoint.
    assert ckpt_lib.resolve_model_scope(ssd, "ssd_300_vgg", "vgg_16") is None
    assert "--checkpoint_model_scope=vgg_16 ignored" in caplog.text
    obj = tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "obj" / "ckpt"))
    assert ckpt_lib.resolve_model_scope(obj, "ssd_300_vgg", "vgg_16") is None


# ---------------------------------------------------------------------------------------
# The checkpoint keeper
# ---------------------------------------------------------------------------------------

def test_train_dir_that_is_a_file_is_a_usage_error(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    with pytest.raises(UsageError, match=f"--train_dir={afile} is a file, not a directory"):
        checkpoint_keeper.prepare_train_dir(str(afile))
    with pytest.raises(DataError, match="cannot create the directory"):
        checkpoint_keeper.prepare_train_dir(str(afile / "run"))
    checkpoint_keeper.prepare_train_dir(str(tmp_path / "a" / "b"))
    assert os.path.isdir(tmp_path / "a" / "b")


class _NetInfo:
    """What the keeper needs of a net: the sidecar's model name and params."""

    def __init__(self):
        from nets import nets_factory

        self.model_name = "ssd_300_vgg"
        self.params = nets_factory.get_network("ssd_300_vgg").default_params


def _keeper(train_dir, keep=2):
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0), step=step)
    keeper = checkpoint_keeper.CheckpointKeeper(str(train_dir), checkpoint, step, keep,
                                                is_chief=True, task_id=0, net=_NetInfo())
    return keeper, step


def test_keeper_saves_rotates_and_finds_the_latest_ckpt(tmp_path):
    keeper, step = _keeper(tmp_path)
    assert keeper.latest_in_train_dir() is None
    for n in (1, 2, 3):
        step.assign(n)
        assert keeper.save() == str(tmp_path / f"ckpt-{n}")
    assert keeper.save() is None  # step 3 is saved already
    # Rotation (keep 2) removed ckpt-1 and its sidecar; each kept one has its sidecar.
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-2.index",
                                                                      "ckpt-3.index"]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.ssd.json")) == ["ckpt-2.ssd.json",
                                                                         "ckpt-3.ssd.json"]
    assert ckpt_lib.read_metadata(str(tmp_path / "ckpt-3"))["model_name"] == "ssd_300_vgg"
    assert keeper.latest_in_train_dir() == str(tmp_path / "ckpt-3")
    # Another checkpoint in the folder (not ckpt-N), a ckpt-9 still being written (no data
    # yet) and a lost state file do not change the answer.
    _write_tf1(str(tmp_path / "model.ckpt-7"), ["x"])
    (tmp_path / "ckpt-9.index").write_bytes((tmp_path / "ckpt-3.index").read_bytes())
    os.remove(tmp_path / "checkpoint")
    assert keeper.latest_in_train_dir() == str(tmp_path / "ckpt-3")


def test_missing_or_corrupt_init_checkpoint_is_one_data_error(tmp_path):
    keeper, step = _keeper(tmp_path / "train")
    missing = str(tmp_path / "absent.ckpt")
    config = TrainConfig(train_dir=str(tmp_path / "train"), checkpoint_path=missing)
    # The wording after the path is fileio.checkpoint_files' (resolve_checkpoint, open_reader).
    with pytest.raises(DataError, match=f"^--checkpoint_path: {re.escape(missing)}: ") as err:
        checkpoint_keeper.restore_or_initialize(config, keeper, _NetInfo(), None, step, {})
    assert "\n" not in str(err.value)
    corrupt = _write_tf1(str(tmp_path / "damaged.ckpt"), ["ssd_300_vgg/conv1/conv1_1/weights"])
    with open(corrupt + ".index", "r+b") as f:
        f.truncate(10)
    config = dataclasses.replace(config, checkpoint_path=corrupt)
    with pytest.raises(DataError, match=f"^--checkpoint_path: {re.escape(corrupt)}: .*corrupt"
                       ) as err:
        checkpoint_keeper.restore_or_initialize(config, keeper, _NetInfo(), None, step, {})
    assert "\n" not in str(err.value)
    # Nothing in train_dir, no --checkpoint_path: from scratch.
    config = dataclasses.replace(config, checkpoint_path=None)
    assert checkpoint_keeper.restore_or_initialize(config, keeper, _NetInfo(), None, step,
                                                   {}) == "scratch"


def test_summary_images_draw_the_boxes_of_positive_anchors():
    from tf_extended import boxes as tfe_boxes

    anchors = np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.5, 0.5]], np.float32)
    gt = tf.constant([[[0.125, 0.25, 0.625, 0.75], [0.0, 0.0, 0.5, 0.5]]], tf.float32)
    locs = tfe_boxes.encode(gt, tf.constant(anchors)[None], (0.1, 0.1, 0.2, 0.2))
    labels = tf.constant([[3, 0]], tf.int64)  # only the first anchor is positive
    # A mid-grey image: RGB minus the means (123, 117, 104) is -> 128 everywhere.
    images = tf.constant(128.0, shape=[1, 33, 33, 3]) - tf.constant([123.0, 117.0, 104.0])
    out = training.summary_images(images, labels, locs, anchors, (0.1, 0.1, 0.2, 0.2)).numpy()
    assert out.shape == (1, 33, 33, 3)
    grey = 128.0 / 255.0
    np.testing.assert_allclose(out[0, 16, 16], [grey] * 3, atol=1e-6)  # inside: untouched
    # Top edge of the positive box: row 0.125 * 32 = 4, columns 8..24, drawn in red.
    np.testing.assert_allclose(out[0, 4, 16], [1.0, 0.2, 0.2], atol=1e-6)
    # The negative anchor's box (top-left quarter, edge at row 16 col 4) is not drawn.
    np.testing.assert_allclose(out[0, 16, 4], [grey] * 3, atol=1e-6)


def test_format_duration():
    assert training._format_duration(59) == "59s"
    assert training._format_duration(61) == "1m01s"
    assert training._format_duration(3 * 3600 + 120) == "3h02m"
    assert training._format_duration(math.inf) == "?"


def test_atomic_write_json_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "c.json")
    atomic.write_json(path, {"a": (1, 2)})
    atomic.write_json(path, {"a": 3})
    assert os.listdir(tmp_path) == ["c.json"]
    assert open(path).read().strip() == '{\n "a": 3\n}'


def test_vgg16_fc_layers_of_excluded_conv6_conv7_are_not_a_mismatch():
    readme = ["ssd_300_vgg/conv6", "ssd_300_vgg/conv7", "ssd_300_vgg/block8"]
    err = ckpt_lib.CheckpointMismatchError("x", unexpected=["vgg_16/fc6/weights",
                                                            "vgg_16/fc7/biases"])
    assert ckpt_lib.only_excluded_fc_layers(err, "vgg_16", "ssd_300_vgg", readme)
    # conv7 not excluded: fc7 is a real mismatch.
    assert not ckpt_lib.only_excluded_fc_layers(err, "vgg_16", "ssd_300_vgg", readme[::2])
    assert not ckpt_lib.only_excluded_fc_layers(err, None, "ssd_300_vgg", readme)
    other = ckpt_lib.CheckpointMismatchError("x", unexpected=["vgg_16/fc6/weights"],
                                    missing=["ssd_300_vgg/conv1/conv1_1/weights"])
    assert not ckpt_lib.only_excluded_fc_layers(other, "vgg_16", "ssd_300_vgg", readme)


@pytest.mark.slow
def test_each_input_pipeline_draws_its_own_augmentations(tmp_path):
    """With 2 input pipelines (multi-worker) both read the same one-image dataset: the k-th
    examples must still get different crops/flips/colours (a seed per pipeline), and the same
    pipeline twice must give the same batch (seeded)."""
    from datasets import dataset_factory, pascalvoc_to_tfrecords, sample_data
    from nets import nets_factory

    data = str(tmp_path / "data")
    sample_data.generate(data, num_trainval=1, num_test=0, seed=3)
    pascalvoc_to_tfrecords.convert_voc(data, str(tmp_path / "records"), "trainval",
                                       class_names=sample_data.CLASSES, split="trainval",
                                       num_workers=1)
    spec = dataset_factory.get_dataset("voc", "trainval", str(tmp_path / "records"),
                                       labels_file=os.path.join(data, "labels.txt"))
    config = TrainConfig(model_name="ssd_160_vgg_lite", augmentation="caffe",
                                  num_readers=1, num_preprocessing_threads=1).resolved()
    params = nets_factory.get_network("ssd_160_vgg_lite").default_params.with_num_classes(5)
    anchors = nets_factory.get_network("ssd_160_vgg_lite")(params).anchors()
    dataset_fn = train_step.make_dataset_fn(config, spec, params, anchors, global_batch=8, seed=5)

    def first_images(pipeline_id):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
        images, _ = next(iter(dataset_fn(ctx)))
        return images.numpy()

    first, second, again = first_images(0), first_images(1), first_images(0)
    assert first.shape == (4, 160, 160, 3)
    np.testing.assert_array_equal(first, again)
    for k in range(4):  # the same source image, augmented differently by each pipeline
        assert np.abs(first[k] - second[k]).mean() > 1.0
