"""Detection for people: what ``detect.py``, the demo and the notebook run on image files.

``detector``: :class:`~inference.detector.ImageDetector` (the eval preprocessing, the net and its
post-processing; boxes mapped back to the original image) and ``detections_to_list`` (JSON-ready
boxes in pixels). ``image_files``: finding and reading image files and ``detect_images`` (JSON +
annotated PNG per image, written atomically). ``drawing``: boxes and anchors drawn with one
colour per class (PIL for files, matplotlib for the notebook). Nets come from
``nets.configure.build_net``.
"""
