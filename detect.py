"""Detect objects in images (files or folders) with an SSD checkpoint.

    python detect.py --checkpoint_path=demo_output/train/export --labels_file=sample_data/labels.txt \\
        --output_dir=detections sample_data/JPEGImages/test_000001.jpg some_folder/

For each image ``<stem>.<ext>`` it writes, in ``--output_dir``:

* ``<stem>.json``: the image path and size and its detections, best first,
  ``{"class_id", "class_name", "score", "bbox": {"ymin", "xmin", "ymax", "xmax"}}`` in pixels of
  the original image (not of the network input), plus the model name, checkpoint and thresholds;
* ``<stem>.png`` (unless ``--nodraw``): the image with the boxes, class names and scores drawn;

and ``detections.json``, all images in one file. Folders are searched (not recursively) for
.jpg/.jpeg/.png/.bmp/.gif files, with a progress bar. Exit codes: 2 usage error, 1 data error
(unreadable image or checkpoint), one line naming the file, never a traceback.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
INDEX_FILENAME = "detections.json"

FLAGS = flags.FLAGS
flags.DEFINE_string("model_name", None, "Network name (ssd_300_vgg, ssd_512_vgg, "
                    "ssd_300_mobilenet_v2, ...). Default: the checkpoint's .ssd.json sidecar, else "
                    "its variable scope, else ssd_300_vgg.")
flags.DEFINE_string("checkpoint_path", None, "Checkpoint prefix, file or directory (latest "
                    "checkpoint). Required unless --random_weights.")
flags.DEFINE_integer("num_classes", None, "Classes including background. Default: the sidecar, "
                     "else the size of the checkpoint's class heads.")
flags.DEFINE_string("anchor_preset", None, "Anchor sizes: voc, voc_caffe, coco_ft, coco_ft_caffe. "
                    "Default: the sidecar, else voc. The original's published ssd_300_vgg.ckpt "
                    "needs coco_ft.")
flags.DEFINE_float("select_threshold", 0.5, "Minimum class score of a detection.")
flags.DEFINE_float("nms_threshold", 0.45, "IoU threshold of the per-class non-maximum suppression.")
flags.DEFINE_integer("select_top_k", 400, "Best boxes per class kept before NMS.")
flags.DEFINE_integer("keep_top_k", 200, "Detections kept per image after NMS.")
flags.DEFINE_integer("batch_size", 4, "Images per forward pass.")
flags.DEFINE_string("labels_file", None, "Label-map file (one class name per line, id = line "
                    "number) for class names; VOC names are used for 21 classes.")
flags.DEFINE_string("output_dir", "detections", "Where the JSON and PNG files go.")
flags.DEFINE_boolean("draw", True, "Also write <stem>.png with the detections drawn.")
flags.DEFINE_boolean("random_weights", False, "Run without a checkpoint (random weights; for "
                     "smoke tests only).")


# -- library functions (no flags, no prints) ----------------------------------------------

def list_images(inputs: Sequence[str]) -> list[str]:
    """Image files named by ``inputs``: files as given, folders expanded (sorted, not recursive,
    extensions :data:`IMAGE_EXTENSIONS`). Raises FileNotFoundError for a missing path and
    ValueError for a folder without images."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(item, name)))
            if not found:
                raise ValueError(f"{item}: folder holds no image file ({', '.join(IMAGE_EXTENSIONS)}).")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: image file or folder not found.")
    return paths


def unique_stems(paths: Sequence[str]) -> list[str]:
    """Output names: the file stem, with ``_1``, ``_2`` ... for stems seen before."""
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, n = stem, 0
        while name in taken:
            n += 1
            name = f"{stem}_{n}"
        taken.add(name)
        stems.append(name)
    return stems


def _write_json(path: str, payload: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def detect_images(detector, paths: Sequence[str], output_dir: str, *,
                  class_names: Optional[Mapping[int, str]] = None, batch_size: int = 4,
                  draw: bool = True, extra: Optional[Mapping[str, Any]] = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Run ``detector`` over image files and write JSON (+ annotated PNG) files.

    Args:
      detector: a ``nets.detection.ImageDetector``.
      paths: image files.
      output_dir: created if needed; gets ``<stem>.json``, ``<stem>.png`` and ``detections.json``.
      class_names: {class id: name} for the JSON and the drawings.
      batch_size: images per forward pass.
      draw: write the annotated PNGs.
      extra: keys added to every per-image JSON (model name, thresholds...).
      progress: show a tqdm progress bar (on stderr).

    Returns:
      One dict per image: ``{'image', 'height', 'width', 'detections', 'json', 'png'}``, boxes
      ``(ymin, xmin, ymax, xmax)`` in pixels of the original image.
    """
    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm

    from nets import detection
    from notebooks import visualization

    os.makedirs(output_dir, exist_ok=True)
    stems = unique_stems(paths)
    img_shape = detector.net.params.img_shape
    num_classes = detector.net.params.num_classes
    results: list[dict[str, Any]] = []
    with tqdm(total=len(paths), desc="detect", unit="image", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start:start + batch_size])
            images = [detection.load_image(p) for p in chunk]
            batch = tf.stack([detection.preprocess_image(im, img_shape) for im in images])
            det = detector(batch)
            for i, (path, image) in enumerate(zip(chunk, images)):
                height, width = image.shape[:2]
                stem = stems[start + i]
                result = {"image": path, "height": int(height), "width": int(width),
                          "detections": detection.detections_to_list(
                              det["boxes"][i], det["scores"][i], det["classes"][i],
                              int(det["num_detections"][i]), height, width, class_names)}
                json_path = os.path.join(output_dir, stem + ".json")
                _write_json(json_path, {**result, **(extra or {})})
                result["json"] = json_path
                if draw:
                    # Drawn from the JSON's pixel boxes, so the picture shows exactly what the file says.
                    items = result["detections"]
                    boxes = np.array([[d["bbox"][k] for k in ("ymin", "xmin", "ymax", "xmax")]
                                      for d in items], np.float32).reshape(-1, 4)
                    annotated = visualization.draw_bboxes(
                        image, boxes, [d["class_id"] for d in items], [d["score"] for d in items],
                        class_names=class_names, num_classes=num_classes, normalized=False)
                    result["png"] = visualization.save_png(annotated, os.path.join(output_dir, stem + ".png"))
                results.append(result)
                bar.update(1)
    _write_json(os.path.join(output_dir, INDEX_FILENAME), {**(extra or {}), "images": results})
    return results


# -- script ---------------------------------------------------------------------------------

def fail(message: str, code: int = 1) -> None:
    print(f"detect.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv):
    inputs = argv[1:]
    if not inputs:
        raise app.UsageError("no image files given (pass them after the flags).", exitcode=2)
    if not FLAGS.checkpoint_path and not FLAGS.random_weights:
        raise app.UsageError("--checkpoint_path is required (or --random_weights).", exitcode=2)
    for name in ("select_threshold", "nms_threshold"):
        if not 0.0 <= getattr(FLAGS, name) <= 1.0:
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)} must be in [0, 1].", exitcode=2)
    if FLAGS.batch_size < 1 or FLAGS.keep_top_k < 1 or FLAGS.select_top_k < 1:
        raise app.UsageError("--batch_size, --select_top_k and --keep_top_k must be >= 1.",
                             exitcode=2)
    try:
        paths = list_images(inputs)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))

    from datasets import pascalvoc_common
    from nets import checkpoints, detection, nets_factory, ssd_params

    if FLAGS.model_name is not None and FLAGS.model_name not in nets_factory.network_names():
        raise app.UsageError(f"--model_name={FLAGS.model_name} is unknown; valid names: "
                             f"{', '.join(nets_factory.network_names())}.", exitcode=2)
    if FLAGS.anchor_preset is not None and \
            FLAGS.anchor_preset not in ssd_params.anchor_preset_names():
        raise app.UsageError(f"--anchor_preset={FLAGS.anchor_preset} is unknown; valid: "
                             f"{', '.join(ssd_params.anchor_preset_names())}.", exitcode=2)
    class_names = None
    try:
        if FLAGS.labels_file:
            class_names = pascalvoc_common.labels_to_names(
                pascalvoc_common.load_label_map(FLAGS.labels_file))
        net = detection.build_net(FLAGS.model_name, FLAGS.checkpoint_path, FLAGS.num_classes,
                                  FLAGS.anchor_preset)
        if class_names is None and net.params.num_classes == 21:
            class_names = pascalvoc_common.labels_to_names(pascalvoc_common.VOC_CLASSES)
        detector = detection.ImageDetector(
            net, select_threshold=FLAGS.select_threshold, nms_threshold=FLAGS.nms_threshold,
            select_top_k=FLAGS.select_top_k, keep_top_k=FLAGS.keep_top_k)
        extra = {"model_name": net.model_name, "checkpoint": FLAGS.checkpoint_path,
                 "anchor_preset": net.params.anchor_preset,
                 "select_threshold": FLAGS.select_threshold, "nms_threshold": FLAGS.nms_threshold}
        results = detect_images(detector, paths, FLAGS.output_dir, class_names=class_names,
                                batch_size=FLAGS.batch_size, draw=FLAGS.draw, extra=extra,
                                progress=any(os.path.isdir(i) for i in inputs))
    except (FileNotFoundError, ValueError) as err:  # CheckpointMismatchError is a ValueError
        fail(str(err).splitlines()[0] if not isinstance(err, checkpoints.CheckpointMismatchError)
             else str(err))
    except OSError as err:
        fail(f"{FLAGS.output_dir}: cannot write results ({err.strerror or err}).")
    for result in results:
        logging.info("%s: %d detections -> %s", result["image"], len(result["detections"]),
                     result["json"])
    drawn = " and annotated PNG" if FLAGS.draw else ""
    print(f"Wrote {len(results)} detection file(s){drawn} to {FLAGS.output_dir} "
          f"(all images: {os.path.join(FLAGS.output_dir, INDEX_FILENAME)})")


if __name__ == "__main__":
    app.run(main)
