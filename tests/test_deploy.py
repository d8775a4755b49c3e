"""deploy/ without converting anything: the TFLite post-process op's attributes and anchors,
the export folder's rules, and how exported paths are recognised. The conversions themselves
(real files in LiteRT, ONNX Runtime, TensorFlow) are tests/test_export.py."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import attr_value_pb2

from deploy import export, runtime, tflite
from deploy.graph import (ANCHOR_BITS, CLASS_SPACING, TFLITE_POSTPROCESS_OP, PostprocessSettings,
                          anchor_table, class_grid, class_offsets, implements_signature,
                          tflite_postprocess_attributes)
from tf_extended import boxes as tfe_boxes


def test_postprocess_attributes_reproduce_our_rules():
    attrs = tflite_postprocess_attributes(PostprocessSettings(select_threshold=0.01, nms_threshold=0.45,
                                                              select_top_k=400, keep_top_k=200),
                                          prior_scaling=(0.1, 0.1, 0.2, 0.2))
    # The op keeps score >= threshold; ours keeps > 0.01: the next float32 up.
    assert np.float32(attrs["nms_score_threshold"]) == np.nextafter(np.float32(0.01), np.float32(1))
    assert np.float32(attrs["nms_score_threshold"]) > np.float32(0.01)
    # The op divides by y_scale ...; Caffe multiplies by the variances (x, y, w, h).
    assert (attrs["y_scale"], attrs["x_scale"], attrs["h_scale"], attrs["w_scale"]) == (10.0, 10.0, 5.0, 5.0)
    assert attrs["max_detections"] == 200 and attrs["max_classes_per_detection"] == 1
    # One score column of class-separated candidates, the single-threaded NMS (see the doc).
    assert attrs["num_classes"] == 1 and attrs["use_regular_nms"] is False
    assert tflite_postprocess_attributes(PostprocessSettings(select_threshold=0.0),
                                         (0.1, 0.1, 0.2, 0.2))["nms_score_threshold"] > 0.0


def test_implements_signature_is_a_name_attr_list_proto():
    attrs = {"max_detections": 100, "use_regular_nms": False, "nms_score_threshold": 0.5,
             "y_scale": 10.0, "num_classes": 1}
    parsed = text_format.Parse(implements_signature(TFLITE_POSTPROCESS_OP, attrs),
                               attr_value_pb2.NameAttrList())
    assert parsed.name == TFLITE_POSTPROCESS_OP
    assert parsed.attr["max_detections"].i == 100 and parsed.attr["num_classes"].i == 1
    assert parsed.attr["use_regular_nms"].b is False
    assert parsed.attr["nms_score_threshold"].f == pytest.approx(0.5)
    assert parsed.attr["y_scale"].f == 10.0
    with pytest.raises(TypeError):
        implements_signature("x", {"bad": "text"})


def test_tflite_anchors_and_class_squares():
    anchors = np.array([[0.1, 0.2, 0.5, 0.4], [-0.3, -0.1, 1.2, 1.1]], np.float32)
    table = anchor_table(anchors)
    assert table.dtype == np.int32  # integers: no float16 / int8 rounding in the converters
    cy, cx, h, w = (t.numpy() for t in tfe_boxes.to_center(tf.constant(anchors)))
    np.testing.assert_allclose(table * 2.0 ** -ANCHOR_BITS, np.stack([cy, cx, h, w], -1),
                               rtol=0, atol=2.0 ** -(ANCHOR_BITS + 1))
    # 2**-ANCHOR_BITS must stay exact in float16 (float16 conversion rounds that scale).
    assert float(np.float16(2.0 ** -ANCHOR_BITS)) == 2.0 ** -ANCHOR_BITS
    num_classes = 6  # 5 foreground classes on a 3x3 grid
    assert class_grid(num_classes) == 3 and class_grid(81) == 9 and class_grid(2) == 1
    offsets = class_offsets(num_classes)
    np.testing.assert_array_equal(offsets, np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]])
                                  * CLASS_SPACING)
    # A box of any class, up to 1.5 images out of the image or 3 images tall, stays in its
    # class's square: boxes of two classes never overlap, and the square gives the class back
    # (the graph's floor((centre + spacing/2 - 0.5) / spacing)).
    spans = [(oy - 1.5, ox - 1.5, oy + 2.5, ox + 2.5) for oy, ox in offsets]
    for i in range(5):
        for j in range(i + 1, 5):
            a, b = spans[i], spans[j]
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
    for (oy, ox), c in zip(offsets, range(5)):
        for centre in (-1.49, 0.0, 0.5, 1.0, 2.49):
            square = np.floor((np.array([oy, ox]) + centre + (0.5 * CLASS_SPACING - 0.5))
                              / CLASS_SPACING)
            assert square[0] * 3 + square[1] == c


def test_settings_are_checked():
    with pytest.raises(ValueError):
        PostprocessSettings(select_threshold=1.0)
    with pytest.raises(ValueError):
        PostprocessSettings(nms_threshold=0.0)
    with pytest.raises(ValueError):
        PostprocessSettings(keep_top_k=0)
    assert tflite.file_name("none") == "model.tflite"
    assert tflite.file_name("int8") == "model_int8.tflite"
    with pytest.raises(ValueError, match="float16, int8"):
        tflite.file_name("int4")


def test_formats_are_parsed_in_a_fixed_order():
    assert export.parse_formats("onnx, saved_model") == ["saved_model", "onnx"]
    with pytest.raises(ValueError, match="pytorch"):
        export.parse_formats("saved_model,pytorch")
    with pytest.raises(ValueError):
        export.parse_formats(" , ")


def _fake_export(folder, identity):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "export.json"), "w") as f:
        json.dump({"identity": identity, "model_name": "ssd_160_vgg_lite", "source": "ckpt-1",
                   "created": "2026-01-01T00:00:00+00:00", "files": {}}, f)


def test_export_folder_rules(tmp_path):
    new = str(tmp_path / "new")
    assert export.check_folder(new, "abc", overwrite=False) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export.check_folder(str(empty), "abc", overwrite=False) is None
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(export.ExportFolderError, match="holds no export"):
        export.check_folder(str(foreign), "abc", overwrite=False)
    assert export.check_folder(str(foreign), "abc", overwrite=True) is None
    same = str(tmp_path / "same")
    _fake_export(same, "abc")
    assert export.check_folder(same, "abc", overwrite=False)["identity"] == "abc"
    with pytest.raises(export.ExportFolderError, match="different model.*--overwrite"):
        export.check_folder(same, "xyz", overwrite=False)
    assert export.check_folder(same, "xyz", overwrite=True) is None
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(export.ExportFolderError, match="is a file"):
        export.check_folder(str(afile), "abc", overwrite=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "export.json").write_text("{not json")
    with pytest.raises(export.ExportFolderError, match="unreadable"):
        export.check_folder(str(broken), "abc", overwrite=False)
    assert export.check_folder(str(broken), "abc", overwrite=True) is None


def test_exported_paths_are_recognised(tmp_path):
    with pytest.raises(runtime.ExportedModelError, match="not found"):
        runtime.model_format(str(tmp_path / "missing.tflite"))
    odd = tmp_path / "model.pt"
    odd.write_bytes(b"x")
    with pytest.raises(runtime.ExportedModelError, match="unknown model format '.pt'"):
        runtime.model_format(str(odd))
    with pytest.raises(runtime.ExportedModelError, match="no saved_model.pb"):
        runtime.model_format(str(tmp_path))
    for name, fmt in (("m.tflite", "tflite"), ("m.ONNX", "onnx")):
        (tmp_path / name).write_bytes(b"x")
        assert runtime.model_format(str(tmp_path / name)) == fmt
    export_dir = tmp_path / "exported"
    (export_dir / "saved_model").mkdir(parents=True)
    (export_dir / "saved_model" / "saved_model.pb").write_bytes(b"")
    assert runtime.resolve_model_path(str(export_dir)) == str(export_dir / "saved_model")
    assert runtime.model_format(runtime.resolve_model_path(str(export_dir))) == "saved_model"
    # A truncated file is one clear error, not a crash.
    with pytest.raises(runtime.ExportedModelError, match="m.tflite"):
        runtime.load(str(tmp_path / "m.tflite"))


@pytest.mark.slow  # converts a TFLite model
def test_litert_threaded_regular_nms_drops_a_class(tmp_path):
    """Why the TFLite export does not use the post-process op's per-class ("regular") NMS:
    LiteRT's multi-threaded version never processes the class whose index equals the thread
    count (ai-edge-litert 2.0.3 .. 2.3.0). If this test fails, a LiteRT update fixed it and
    deploy.graph.tflite_postprocess_attributes may use the regular NMS again."""
    from ai_edge_litert.interpreter import Interpreter

    num_fg, per_class = 4, 3
    attrs = {"max_detections": 20, "max_classes_per_detection": 1, "detections_per_class": 20,
             "use_regular_nms": True, "nms_score_threshold": 0.1, "nms_iou_threshold": 0.5,
             "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0,
             "num_classes": num_fg}
    num = num_fg * per_class
    # Disjoint anchors; anchor a is class a // per_class's, scored 0.9.
    anchors = np.array([[0.05 + 0.08 * a, 0.5, 0.05, 0.05] for a in range(num)], np.float32)
    scores = np.zeros([1, num, num_fg + 1], np.float32)
    for a in range(num):
        scores[0, a, 1 + a // per_class] = 0.9

    @tf.function(experimental_implements=implements_signature(TFLITE_POSTPROCESS_OP, attrs))
    def fused(box_encodings, class_predictions, anchor_boxes):
        return tf.zeros([1, 20, 4]), tf.zeros([1, 20]), tf.zeros([1, 20]), tf.zeros([1])

    @tf.function(input_signature=[tf.TensorSpec([1, num, num_fg + 1], tf.float32)])
    def model(class_predictions):
        boxes, classes, det_scores, count = fused(tf.zeros([1, num, 4]), class_predictions,
                                                  tf.constant(anchors))
        return {"classes": classes, "count": count}

    module = tf.Module()
    module.f = model
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=model.get_concrete_function())
    data = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert()

    def found(threads):
        run = Interpreter(model_content=data, num_threads=threads).get_signature_runner()
        out = run(class_predictions=scores)
        return sorted(set(out["classes"][0, :int(out["count"][0])].astype(int).tolist()))

    assert found(1) == [0, 1, 2, 3]
    assert found(2) == [0, 1, 3]  # class 2 (= the thread count) is never processed
    assert found(4) == [0, 1, 2, 3]
