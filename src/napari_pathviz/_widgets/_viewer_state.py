"""One state per napari viewer, whatever napari hands a widget.

napari hands each plugin widget its own ``PublicOnlyProxy`` of the viewer, and every layer a
widget reaches through it (``viewer.layers[name]``, ``viewer.add_layer``, the active layer) is a
fresh proxy too. So neither ``id()`` nor ``is`` of what a widget holds tells one viewer or one
layer from another: state keyed that way splits into one copy per widget. Everything the PathViz
widgets of a viewer share (the patches layer in use, the model in use) is found here by the
real viewer, and layers are compared unwrapped.
"""

from __future__ import annotations

import weakref
from typing import Any, TypeVar

import wrapt  # napari's proxies are wrapt ObjectProxies

T = TypeVar("T")

# (id(real viewer), kind) -> that viewer's state of that kind, held weakly: the widgets keep
# their viewer's state alive, and a state keeps its viewer only weakly, so closing a viewer
# frees both. A state's ``viewer`` tells a reused id from the viewer it was made for.
_STATES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def unwrap(obj: Any) -> Any:
    """The object behind napari's proxies (a viewer, a layer, a layer list); itself otherwise."""
    while isinstance(obj, wrapt.ObjectProxy):
        obj = obj.__wrapped__
    return obj


def real_viewer(viewer):
    """The viewer itself, whichever of napari's proxies of it a widget was given."""
    return unwrap(viewer)


def same(a: Any, b: Any) -> bool:
    """``a is b`` for napari objects, through any proxies of them."""
    return unwrap(a) is unwrap(b)


def per_viewer(viewer, kind: type[T]) -> T:
    """The viewer's one ``kind`` (made as ``kind(real_viewer)`` on first use), the same for
    every widget of the viewer whatever proxy of it the widget holds."""
    real = real_viewer(viewer)
    key = (id(real), kind)
    state = _STATES.get(key)
    if state is None or state.viewer is not real:  # an id may be reused by a new viewer
        state = _STATES[key] = kind(real)
    return state
