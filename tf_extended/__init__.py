"""TensorFlow ops for SSD: boxes, target encoding, losses, post-processing, VOC metrics."""
