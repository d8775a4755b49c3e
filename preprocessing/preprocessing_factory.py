"""Preprocessing factory: model name -> preprocessing function (TF-Slim's factory shape).

``get_preprocessing(name, is_training, **options)`` returns

* training: ``fn(image, labels, bboxes, out_shape, difficult=None, seed=None)`` ->
  ``(image, labels, bboxes)``;
* eval: ``fn(image, labels, bboxes, out_shape, difficult=None, resize=Resize.WARP_RESIZE)`` ->
  ``(image, labels, bboxes, bbox_img)``;

with ``options`` (keyword arguments of :func:`ssd_vgg_preprocessing.preprocess_for_train` /
``preprocess_for_eval``) bound. Boxes are ``(ymin, xmin, ymax, xmax)``, normalized.

Later variants register themselves with :func:`register_preprocessing`, either by exact name or
by a glob pattern (``'ssd_*'`` already covers e.g. ``ssd_300_vgg_caffe`` and
``ssd_300_mobilenet_v2``).
"""
from __future__ import annotations

import fnmatch
import inspect
import functools
from types import ModuleType
from typing import Callable

from preprocessing import ssd_vgg_preprocessing

# name or glob pattern -> module with preprocess_for_train / preprocess_for_eval.
_REGISTRY: dict[str, ModuleType] = {
    "ssd_300_vgg": ssd_vgg_preprocessing,
    "ssd_512_vgg": ssd_vgg_preprocessing,
}
# Every SSD net of this project takes the same input (RGB minus the means, DESIGN §5; the
# MobileNet variants rescale inside the net), so any ssd_* name gets the SSD preprocessing.
_PATTERNS: dict[str, ModuleType] = {
    "ssd_*": ssd_vgg_preprocessing,
}


def register_preprocessing(name_or_pattern: str, module: ModuleType) -> None:
    """Register a preprocessing module (with ``preprocess_for_train``/``preprocess_for_eval``).

    A name containing ``*``, ``?`` or ``[`` is a glob pattern matched when no exact name is.
    """
    for attr in ("preprocess_for_train", "preprocess_for_eval"):
        if not callable(getattr(module, attr, None)):
            raise ValueError(f"module {module.__name__} has no {attr}(); cannot register {name_or_pattern!r}.")
    if any(c in name_or_pattern for c in "*?["):
        _PATTERNS[name_or_pattern] = module
    else:
        _REGISTRY[name_or_pattern] = module


def registered_names() -> list[str]:
    """Exact names and patterns, sorted, for error messages and --help."""
    return sorted(_REGISTRY) + sorted(_PATTERNS)


def _lookup(name: str) -> ModuleType:
    if name in _REGISTRY:
        return _REGISTRY[name]
    for pattern, module in _PATTERNS.items():
        if fnmatch.fnmatchcase(name, pattern):
            return module
    raise ValueError(f"Preprocessing name [{name}] was not recognized; valid names: "
                     f"{', '.join(registered_names())}.")


def get_preprocessing(name: str, is_training: bool, **options) -> Callable:
    """Return the preprocessing function of model ``name`` with ``options`` bound.

    Raises:
      ValueError: unknown name (the message lists the valid ones) or an unknown option.
    """
    module = _lookup(name)
    fn = module.preprocess_for_train if is_training else module.preprocess_for_eval
    # Fail now, not inside tf.data, on a misspelt option.
    params = inspect.signature(fn).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"Unknown {'training' if is_training else 'eval'} preprocessing option(s) "
                         f"{unknown} for [{name}]; valid: {sorted(p for p in params if p not in ('image', 'labels', 'bboxes', 'out_shape'))}.")
    bound = functools.partial(fn, **options)
    functools.update_wrapper(bound, fn)
    return bound
