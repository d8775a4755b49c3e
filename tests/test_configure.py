"""nets.configure: the one flags + checkpoint -> SSDParams rule of train, eval, detect, export."""
import pytest

from nets import configure, nets_factory

MODEL = "ssd_300_vgg"


def test_unknown_model_is_a_settings_error_listing_the_nets():
    with pytest.raises(configure.SettingsError, match="ssd_512_vgg") as err:
        configure.resolve_model("inception_v3")
    assert err.value.exit_code == 2


def test_defaults_and_flags_without_checkpoint():
    name, params = configure.resolve_model(default_num_classes=5)
    assert name == MODEL and params.num_classes == 5 and params.anchor_preset == "voc"
    _, params = configure.resolve_model(MODEL, num_classes=7, anchor_preset="coco_ft")
    assert params.num_classes == 7 and params.anchor_sizes[0] == (21.0, 45.0)
    with pytest.raises(configure.SettingsError, match="--anchor_preset"):
        configure.resolve_model(MODEL, anchor_preset="kitti")


def test_small_inputs_drop_empty_layers_only_when_asked():
    _, params = configure.resolve_model(MODEL, image_size=64, drop_empty_layers=True)
    assert params.img_shape == (64, 64) and len(params.feat_layers) < 6
    with pytest.raises(configure.SettingsError, match="input size 64"):
        configure.resolve_model(MODEL, image_size=64)


def test_model_and_classes_read_from_a_checkpoint_without_sidecar(tmp_path):
    """The original's published checkpoints have no sidecar: the scope names the net and the
    class heads its class count (81 here), the preset comes from the flag."""
    ssd_class = nets_factory.get_network("ssd_160_vgg_lite")
    params = ssd_class.default_params.with_num_classes(81)
    prefix = ssd_class(params).save_checkpoint(str(tmp_path / "x.ckpt"))
    (tmp_path / "x.ckpt.ssd.json").unlink()
    name, got = configure.resolve_model(checkpoint=prefix)
    assert name == "ssd_160_vgg_lite" and got.num_classes == 81
    net = configure.build_net(checkpoint=str(tmp_path))  # the folder: its latest checkpoint
    assert net.model_name == "ssd_160_vgg_lite" and net.params.num_classes == 81
