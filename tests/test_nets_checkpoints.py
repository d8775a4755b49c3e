"""nets.checkpoints: TF1 checkpoints by TF-Slim name (written here by TF's own Saver and by
SaveV2), vgg_16 decimation, training (object-based) checkpoints, the sidecar, every error."""
import dataclasses
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from nets import checkpoints, configure, nets_factory
from nets.checkpoints import CheckpointMismatchError
from nets.ssd_params import ExtraBlock

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "ssd_300_vgg_variables.txt")
MODEL = "ssd_300_vgg"
BOX_SCOPES = ",".join(f"{MODEL}/{layer}_box" for layer in
                      ("block4", "block7", "block8", "block9", "block10", "block11"))

# A small SSD300-VGG variant (same trunk, narrow extra blocks, 150x150 input) keeps files small.
SMALL_EXTRA_BLOCKS = (
    ExtraBlock("block8", 32, 64, 3, 2, 1),
    ExtraBlock("block9", 16, 32, 3, 1, 0),
    ExtraBlock("block10", 16, 32, 3, 2, 1),
    ExtraBlock("block11", 16, 32, 4, 1, 1),
)


def small_params(num_classes=21):
    base = nets_factory.get_network(MODEL).default_params
    return dataclasses.replace(base, extra_blocks=SMALL_EXTRA_BLOCKS, num_classes=num_classes,
                               no_annotation_label=num_classes,
                               anchor_preset="custom").with_img_shape((150, 150))


def make_net(num_classes=21, seed=0):
    net = nets_factory.get_network(MODEL)(small_params(num_classes))
    rng = np.random.default_rng(seed)
    for v in net.weights:  # distinct values everywhere (biases are zeros at init)
        v.assign(rng.normal(0, 0.05, v.shape).astype(np.float32))
    return net


def values(net):
    return {name: v.numpy() for name, v in net.variables_by_checkpoint_name().items()}


def write_tf1(prefix, tensors):
    """A TF1 checkpoint written by TF's raw SaveV2 (not by nets.checkpoints)."""
    names = list(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return prefix


IMAGES = np.random.default_rng(7).uniform(-120, 130, (1, 150, 150, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(net, prefix) of a small net saved with save_checkpoint."""
    net = make_net()
    prefix = net.save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "run" / "model.ckpt"))
    return net, prefix


# -- save / load ---------------------------------------------------------------------------

def test_save_writes_tf1_files_names_and_sidecar(saved):
    net, prefix = saved
    directory = os.path.dirname(prefix)
    assert sorted(os.listdir(directory)) == ["checkpoint", "model.ckpt.data-00000-of-00001",
                                             "model.ckpt.index",
                                             "model.ckpt.ssd.json"]  # no temp leftovers
    # TF's state file names it, so TF1 tools (and the original's scripts) given the folder find it.
    assert tf.train.latest_checkpoint(directory) == prefix
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert sorted(shapes) == sorted(net.checkpoint_name_map().values())
    assert shapes[f"{MODEL}/conv6/weights"] == [3, 3, 512, 1024]
    with open(prefix + ".ssd.json") as f:
        meta = json.load(f)
    assert meta == checkpoints.read_metadata(prefix) == checkpoints.read_metadata(directory)
    assert meta["model_name"] == MODEL and meta["num_classes"] == 21
    assert meta["anchor_preset"] == "custom" and meta["img_shape"] == [150, 150]
    assert meta["anchor_sizes"][0] == [30.0, 60.0] and meta["anchor_steps"][0] == 8.0
    assert meta["anchor_offset"] == 0.5 and len(meta["anchor_ratios"][1]) == 4


def test_round_trip_gives_identical_outputs(saved):
    net, prefix = saved
    other = make_net(seed=1)
    # A directory means its latest checkpoint; a file of the checkpoint works too.
    for path in (os.path.dirname(prefix), prefix + ".index", prefix):
        report = other.load_checkpoint(path)
        assert len(report["loaded"]) == len(net.weights)
        assert report["missing"] == report["unexpected"] == report["excluded"] == []
    a, b = net.inference(IMAGES), other.inference(IMAGES)
    for key in ("logits", "localisations"):
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.slow
def test_tf1_saver_checkpoint_with_original_names_loads(tmp_path):
    """The published ssd_300_vgg.ckpt layout: written by a TF1 graph-mode Saver from the
    golden list of names and shapes, plus a global step and Momentum slots."""
    rng = np.random.default_rng(11)
    written = {}
    with open(GOLDEN) as f:
        entries = [line.split() for line in f if line.strip() and not line.startswith("#")]
    graph = tf.Graph()
    with graph.as_default():
        for name, shape in entries:
            shape = json.loads(shape)
            value = rng.normal(0, 0.05, shape).astype(np.float32)
            written[name] = value
            scope, var_name = name.rsplit("/", 1)
            with tf.compat.v1.variable_scope(scope):
                tf.compat.v1.get_variable(var_name, initializer=value)
        with tf.compat.v1.variable_scope(f"{MODEL}/conv1/conv1_1/weights"):
            tf.compat.v1.get_variable("Momentum", initializer=np.zeros([3, 3, 3, 64], np.float32))
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "ssd_300_vgg.ckpt"), write_meta_graph=False)
    net = nets_factory.get_network(MODEL)()
    report = net.load_checkpoint(prefix)
    assert report["missing"] == report["unexpected"] == [] and len(report["loaded"]) == 71
    got = values(net)
    for name, value in written.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    # Same-shaped layers are told apart by name, checked through the Keras layers themselves.
    graph = net._graph
    for layer, name in (("block10_conv3x3", "block10/conv3x3/weights"),
                        ("block11_conv3x3", "block11/conv3x3/weights"),
                        ("block10_conv1x1", "block10/conv1x1/weights"),
                        ("block11_conv1x1", "block11/conv1x1/weights"),
                        ("block10_box_conv_loc", "block10_box/conv_loc/weights"),
                        ("block11_box_conv_cls", "block11_box/conv_cls/weights")):
        np.testing.assert_array_equal(graph.get_layer(layer).kernel.numpy(),
                                      written[f"{MODEL}/{name}"])
    np.testing.assert_array_equal(graph.get_layer("block4_box_l2norm").gamma.numpy(),
                                  written[f"{MODEL}/block4_box/L2Normalization/gamma"])
    # Without a sidecar the class count comes from the heads, the model from the scope.
    assert checkpoints.read_metadata(prefix) is None
    model_name, params = configure.resolve_model(checkpoint=prefix, anchor_preset="coco_ft")
    assert model_name == MODEL and params.num_classes == 21
    assert params.anchor_sizes[0] == (21.0, 45.0)


@pytest.mark.slow
def test_vgg16_checkpoint_decimated_into_conv6_conv7(tmp_path):
    rng = np.random.default_rng(5)
    net = make_net()
    before = values(net)
    tensors = {}
    for name, var in net.variables_by_checkpoint_name().items():
        scope = name.split("/")[1]
        if scope.startswith("conv") and scope not in ("conv6", "conv7"):
            tensors["vgg_16/" + name.split("/", 1)[1]] = rng.normal(0, 1, var.shape).astype(np.float32)
    tensors["vgg_16/fc6/weights"] = rng.standard_normal((7, 7, 512, 4096), dtype=np.float32)
    tensors["vgg_16/fc6/biases"] = rng.standard_normal(4096, dtype=np.float32)
    tensors["vgg_16/fc7/weights"] = rng.standard_normal((1, 1, 4096, 4096), dtype=np.float32)
    tensors["vgg_16/fc7/biases"] = rng.standard_normal(4096, dtype=np.float32)
    tensors["vgg_16/fc8/weights"] = np.zeros((1, 1, 4096, 1000), np.float32)
    tensors["vgg_16/fc8/biases"] = np.zeros(1000, np.float32)
    tensors["global_step"] = np.int64(1000)
    prefix = write_tf1(str(tmp_path / "vgg_16.ckpt"), tensors)
    try:
        report = net.load_checkpoint(prefix, model_scope="vgg_16")
        assert report["missing"] == report["unexpected"] == []
        assert len(report["loaded"]) == 30  # 13 VGG convs + conv6 + conv7, weights and biases
        got = values(net)
        np.testing.assert_array_equal(got[f"{MODEL}/conv3/conv3_2/weights"],
                                      tensors["vgg_16/conv3/conv3_2/weights"])
        taps = [0, 3, 6]
        fc6 = tensors["vgg_16/fc6/weights"]
        expected = np.take(np.take(fc6, taps, axis=0), taps, axis=1)[:, :, :, np.arange(0, 4096, 4)]
        assert got[f"{MODEL}/conv6/weights"].shape == (3, 3, 512, 1024)
        np.testing.assert_array_equal(got[f"{MODEL}/conv6/weights"], expected)
        np.testing.assert_array_equal(got[f"{MODEL}/conv6/weights"][2, 1, 7, 5], fc6[6, 3, 7, 20])
        np.testing.assert_array_equal(got[f"{MODEL}/conv6/biases"],
                                      tensors["vgg_16/fc6/biases"][np.arange(0, 4096, 4)])
        keep = np.arange(0, 4096, 4)
        np.testing.assert_array_equal(got[f"{MODEL}/conv7/weights"][0, 0],
                                      tensors["vgg_16/fc7/weights"][0, 0][np.ix_(keep, keep)])
        np.testing.assert_array_equal(got[f"{MODEL}/conv7/biases"], tensors["vgg_16/fc7/biases"][keep])
        # Extra blocks and heads keep their values.
        for name in (f"{MODEL}/block8/conv1x1/weights", f"{MODEL}/block4_box/conv_cls/biases",
                     f"{MODEL}/block4_box/L2Normalization/gamma"):
            np.testing.assert_array_equal(got[name], before[name])
        # Without model_scope nothing matches: the error names the scope to pass.
        with pytest.raises(CheckpointMismatchError, match="--checkpoint_model_scope=vgg_16"):
            make_net().load_checkpoint(prefix)
    finally:
        for path in glob.glob(prefix + "*"):
            os.remove(path)


@pytest.mark.slow
def test_object_based_training_checkpoint(tmp_path):
    net = make_net(seed=3)
    step = tf.Variable(42, dtype=tf.int64)
    optimizer_state = tf.Variable(np.ones(3, np.float32))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=net, step=step, optimizer_state=optimizer_state),
        str(tmp_path / "train"), max_to_keep=2)
    prefix = manager.save()
    checkpoints.write_metadata(prefix, net.model_name, net.params)
    other = make_net(seed=4)
    report = other.load_checkpoint(str(tmp_path / "train"))
    assert len(report["loaded"]) == len(net.weights) and report["unexpected"] == []
    for name, value in values(net).items():
        np.testing.assert_array_equal(values(other)[name], value, err_msg=name)
    # Into an 81-class net: the class heads are reported, then excluded.
    net81 = make_net(num_classes=81)
    with pytest.raises(CheckpointMismatchError, match="are for 21 classes, this net has 81"):
        net81.load_checkpoint(prefix)
    report = net81.load_checkpoint(prefix, exclude_scopes=BOX_SCOPES)
    assert len(report["excluded"]) == 25 and report["missing"] == []
    # A checkpoint without a net under 'model' says how to save one.
    bare = tf.train.Checkpoint(step=step).save(str(tmp_path / "bare" / "ckpt"))
    with pytest.raises(CheckpointMismatchError, match="tf.train.Checkpoint\\(model=net"):
        make_net().load_checkpoint(bare)


# -- errors --------------------------------------------------------------------------------

def test_wrong_shape_21_into_81_classes_suggests_excluding_box_scopes(saved):
    _, prefix = saved
    net81 = make_net(num_classes=81, seed=2)
    before = values(net81)
    with pytest.raises(CheckpointMismatchError) as err:
        net81.load_checkpoint(prefix)
    message = str(err.value)
    assert "12 wrong shape" in message
    assert f"{MODEL}/block4_box/conv_cls/weights checkpoint [3, 3, 512, 84] net [3, 3, 512, 324]" \
        in message
    assert "are for 21 classes, this net has 81 classes" in message
    assert f"--checkpoint_exclude_scopes={BOX_SCOPES}" in message
    assert len(err.value.wrong_shape) == 12 and not err.value.missing
    # Nothing was assigned by the failed call.
    for name, value in values(net81).items():
        np.testing.assert_array_equal(value, before[name])
    # The suggested flag value works (comma-separated string, as the original's flag).
    report = net81.load_checkpoint(prefix, exclude_scopes=BOX_SCOPES)
    assert len(report["loaded"]) == 46 and len(report["excluded"]) == 25
    np.testing.assert_array_equal(values(net81)[f"{MODEL}/conv1/conv1_1/weights"],
                                  tf.train.load_checkpoint(prefix).get_tensor(
                                      f"{MODEL}/conv1/conv1_1/weights"))


def test_missing_and_unexpected_variables(saved, tmp_path):
    net, prefix = saved
    reader = tf.train.load_checkpoint(prefix)
    tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    gone = [f"{MODEL}/conv7/weights", f"{MODEL}/block9/conv3x3/biases"]
    for name in gone:
        del tensors[name]
    tensors[f"{MODEL}/block99/conv1x1/weights"] = np.zeros([1, 1, 4, 4], np.float32)
    tensors[f"{MODEL}/conv1/conv1_1/weights/Momentum"] = np.zeros([3, 3, 3, 64], np.float32)
    tensors["global_step"] = np.int64(7)
    tensors["other_model/conv1/weights"] = np.zeros([2], np.float32)
    partial = write_tf1(str(tmp_path / "partial.ckpt"), tensors)

    target = make_net(seed=9)
    with pytest.raises(CheckpointMismatchError) as err:
        target.load_checkpoint(partial)
    assert sorted(err.value.missing) == sorted(gone)
    # Optimizer slots, global_step and other scopes are not "unexpected".
    assert err.value.unexpected == [f"{MODEL}/block99/conv1x1/weights"]
    message = str(err.value)
    assert "2 missing, 1 unexpected, 0 wrong shape" in message
    assert f"missing: {MODEL}/conv7/weights" in message and "--ignore_missing_vars" in message

    kept = target.variables_by_checkpoint_name()[gone[0]].numpy()
    report = target.load_checkpoint(partial, ignore_missing_vars=True)
    assert sorted(report["missing"]) == sorted(gone)
    assert report["unexpected"] == [f"{MODEL}/block99/conv1x1/weights"]
    got = values(target)
    np.testing.assert_array_equal(got[gone[0]], kept)  # left at its value
    np.testing.assert_array_equal(got[f"{MODEL}/conv6/weights"], tensors[f"{MODEL}/conv6/weights"])
    # Excluding the missing variables' scopes also makes the load pass.
    report = target.load_checkpoint(partial, ignore_missing_vars=True,
                                    exclude_scopes=[f"{MODEL}/conv7", f"{MODEL}/block9"])
    assert report["missing"] == []


def test_other_wrong_shapes_and_model_scope(saved, tmp_path):
    _, prefix = saved
    reader = tf.train.load_checkpoint(prefix)
    # The same weights under another scope load with model_scope.
    renamed = {n.replace(MODEL, "my_ssd", 1): reader.get_tensor(n)
               for n in reader.get_variable_to_shape_map()}
    other = write_tf1(str(tmp_path / "renamed.ckpt"), renamed)
    net = make_net(seed=5)
    with pytest.raises(CheckpointMismatchError, match="--checkpoint_model_scope=my_ssd"):
        net.load_checkpoint(other)
    assert len(net.load_checkpoint(other, model_scope="my_ssd")["loaded"]) == len(net.weights)
    # A full-size SSD300 is not the small net: its extra blocks have other shapes.
    big = nets_factory.get_network(MODEL)()
    with pytest.raises(CheckpointMismatchError) as err:
        big.load_checkpoint(prefix)
    assert f"{MODEL}/block8/conv1x1/weights checkpoint [1, 1, 1024, 32] net [1, 1, 1024, 256]" \
        in str(err.value)
    assert "exclude_scopes" in str(err.value)


def test_file_errors(tmp_path):
    net = make_net()
    with pytest.raises(FileNotFoundError, match="nope.ckpt: checkpoint not found"):
        net.load_checkpoint(str(tmp_path / "nope.ckpt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        net.load_checkpoint(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="not a TF checkpoint"):
        net.load_checkpoint(str(tmp_path / "notes.txt"))
    assert checkpoints.read_metadata(str(tmp_path / "nope.ckpt")) is None
    (tmp_path / "bad.ckpt.ssd.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.ckpt.ssd.json: unreadable"):
        checkpoints.read_metadata(str(tmp_path / "bad.ckpt"))


def test_resolve_model_from_sidecar(saved, tmp_path):
    net, prefix = saved
    model_name, params = configure.resolve_model(checkpoint=prefix)
    assert model_name == MODEL and params.img_shape == (150, 150)
    assert params.anchor_sizes == net.params.anchor_sizes and params.num_classes == 21
    # A sidecar naming a preset gives that preset's sizes.
    full = nets_factory.get_network(MODEL).default_params.with_anchor_preset("coco_ft")
    checkpoints.write_metadata(str(tmp_path / "x.ckpt"), MODEL,
                               dataclasses.replace(full, num_classes=81, no_annotation_label=81))
    write_tf1(str(tmp_path / "x.ckpt"), {"global_step": np.int64(1)})
    model_name, params = configure.resolve_model(checkpoint=str(tmp_path / "x.ckpt"))
    assert params.anchor_preset == "coco_ft" and params.num_classes == 81
    assert params.anchor_sizes == full.anchor_sizes
    # Flags that contradict the sidecar are refused by every tool alike (detect.py used to
    # override the sidecar silently while eval refused: one rule now, eval's).
    with pytest.raises(configure.SettingsError, match="81 classes, but --num_classes=3"):
        configure.resolve_model(checkpoint=str(tmp_path / "x.ckpt"), num_classes=3)
    with pytest.raises(configure.SettingsError, match="anchor preset 'coco_ft'"):
        configure.resolve_model(checkpoint=str(tmp_path / "x.ckpt"), anchor_preset="voc")
    # The same checkpoint without its sidecar: the flags decide.
    os.remove(str(tmp_path / "x.ckpt.ssd.json"))
    _, params = configure.resolve_model(MODEL, checkpoint=str(tmp_path / "x.ckpt"), num_classes=3,
                                        anchor_preset="voc")
    assert params.num_classes == 3 and params.anchor_sizes[0] == (30.0, 60.0)


def test_mixed_bfloat16_net_loads_float32_checkpoint(saved):
    net, prefix = saved
    bf16 = nets_factory.get_network(MODEL)(small_params(), dtype_policy="mixed_bfloat16")
    assert all(v.dtype == "float32" for v in bf16.weights)  # variables stay float32
    bf16.load_checkpoint(prefix)
    a, b = net.inference(IMAGES), bf16.inference(IMAGES)
    for x, y in zip(a["logits"] + a["localisations"], b["logits"] + b["localisations"]):
        assert y.dtype == tf.float32
        x, y = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
        # bfloat16 keeps 8 significant bits: about 0.4% per op, ~1% after 20 layers.
        assert np.linalg.norm(x - y) / np.linalg.norm(x) < 0.05
