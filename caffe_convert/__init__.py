"""Caffe SSD -> this project's TF1 checkpoints, without Caffe installed.

``caffe_pb``: a minimal caffe.proto and the .caffemodel / .prototxt readers (and a writer, for
tests and benches). ``convert``: weights matched by Caffe layer name, anchors from the PriorBox
layers, verification against blobs saved from Caffe. ``caffe_to_tensorflow.py`` is the script;
docs/caffe.md the guide.
"""
