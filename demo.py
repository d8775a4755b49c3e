"""Placeholder main job (``make demo``) until the demo issue lands.

Generates a synthetic image, builds ssd_300_vgg with random weights, runs the detection entry
point on it and prints where the JSON detections went. Random weights give meaningless boxes:
this only shows that the whole path (image file -> net -> post-processing -> JSON) runs.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

OUTPUT_DIR = "demo_output"


def synthetic_image(path: str, height: int = 240, width: int = 320, seed: int = 0) -> str:
    """A JPEG with a few flat-coloured rectangles on a gradient."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], -1)
    for _ in range(4):
        y0, x0 = rng.integers(0, height - 60), rng.integers(0, width - 60)
        h, w = rng.integers(30, 60), rng.integers(30, 60)
        image[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    Image.fromarray(image.astype(np.uint8)).save(path, quality=92)
    return path


def main() -> int:
    from nets import detection

    os.makedirs(OUTPUT_DIR, exist_ok=True)
    image = synthetic_image(os.path.join(OUTPUT_DIR, "synthetic.jpg"))
    net = detection.build_net("ssd_300_vgg")  # random weights: no checkpoint is bundled
    detector = detection.ImageDetector(net, select_threshold=0.3)
    results = detector.detect_files([image])
    written = detection.write_results(results, OUTPUT_DIR, {"model_name": net.model_name,
                                                            "weights": "random"})
    print(f"{image}: {len(results[0]['detections'])} detections (random weights) -> {written[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
