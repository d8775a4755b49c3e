"""Network registry: ``get_network(name)`` -> the network class (TF-Slim factory style).

A network class is a ``keras.Model`` subclass (the project's derive from
:class:`nets.ssd_base.SSDNet`) with the class attributes ``model_name`` (the registry name, also
its checkpoint scope) and ``default_params`` (an ``SSDParams``), built as
``cls(params, dtype_policy=None)`` and offering the API of DESIGN.md §3 (``anchors()``,
``flat_outputs()``, ``detected_bboxes()``, ``load_checkpoint()``, ``save_checkpoint()``,
``checkpoint_name_map()``). The project's nets are listed below
(their modules are imported on first use); others register with :func:`register_network`.
"""
from __future__ import annotations

import importlib
from typing import Callable


def _lazy(module: str, class_name: str) -> Callable[[], type]:
    """A loader that imports ``nets.<module>`` only when the net is asked for."""
    return lambda: getattr(importlib.import_module(f"nets.{module}"), class_name)


# name -> zero-argument loader returning the class (loaders keep registration lazy-friendly).
_NETWORKS: dict[str, Callable[[], type]] = {
    "ssd_300_vgg": _lazy("ssd_vgg", "SSD300VGG"),
    "ssd_512_vgg": _lazy("ssd_vgg", "SSD512VGG"),
    "ssd_160_vgg_lite": _lazy("ssd_vgg", "SSD160VGGLite"),
    "ssd_300_mobilenet_v2": _lazy("ssd_mobilenet", "SSD300MobileNetV2"),
    "ssd_160_mobilenet_v2": _lazy("ssd_mobilenet", "SSD160MobileNetV2"),
}


def network_names() -> tuple[str, ...]:
    """Registered network names, sorted."""
    return tuple(sorted(_NETWORKS))


def register_network(name: str, loader: Callable[[], type] | type) -> None:
    """Register a network class (or a zero-argument function returning it) under ``name``.

    The class must set ``model_name == name`` and ``default_params``.
    """
    if name in _NETWORKS:
        raise ValueError(f"Network {name!r} is already registered.")
    _NETWORKS[name] = loader if not isinstance(loader, type) else (lambda: loader)


def get_network(name: str) -> type:
    """The network class registered as ``name``; its ``default_params`` gives SSDParams.

    Raises:
      ValueError: unknown name (the message lists the valid names).
    """
    if name not in _NETWORKS:
        raise ValueError(f"Unknown network name {name!r}; valid names: "
                         f"{', '.join(network_names())}.")
    cls = _NETWORKS[name]()
    if getattr(cls, "model_name", None) != name:
        raise ValueError(f"Network class {cls.__name__} has model_name "
                         f"{getattr(cls, 'model_name', None)!r}, registered as {name!r}.")
    return cls
