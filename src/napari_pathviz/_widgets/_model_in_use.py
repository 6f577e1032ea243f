"""The model in use: one per viewer, shared by the Model inference and Attributions widgets.

Each widget shows its own model form (a Qt field has one parent), but the forms of one viewer
show the same values: what is entered in one appears in the other (``values``, ``changed``).
The model those values name is loaded once and kept while they stay the same; each run gets
its own copy of it, since a run moves the model to its device and hooks its layers.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import weakref

from psygnal import Signal

from ._viewer_state import per_viewer


def model_in_use(viewer) -> ModelInUse:
    """The viewer's one ModelInUse, whatever proxy of the viewer a widget holds."""
    return per_viewer(viewer, ModelInUse)


class ModelInUse:
    """The model fields' values (by field name) and the model they name, loaded once.
    ``changed`` carries the name of the field whose value changed."""

    changed = Signal(str)

    def __init__(self, viewer):
        self._viewer_ref = weakref.ref(viewer)
        self.values: dict[str, object] = {}
        self.loads = 0  # models read from disk so far (reruns with the same fields read none)
        self._loaded: tuple[tuple, object] | None = None  # (key, ModelSpec)
        self._lock = threading.Lock()  # runs load in worker threads

    @property
    def viewer(self):
        return self._viewer_ref()

    def set_value(self, name: str, value) -> None:
        if name in self.values and self.values[name] == value:
            return
        self.values[name] = value
        self.changed.emit(name)

    def load(self, arguments: dict):
        """A private copy of the model that ``arguments`` (load_model's) name; read from disk
        only when the arguments, the file's bytes or its model card changed since the last
        load. Runs in a worker thread."""
        from ..models import load_model

        if not os.path.isfile(str(arguments.get("path", ""))):
            return load_model(**arguments)  # which names the file at fault
        with self._lock:
            key = _model_key(arguments)
            if self._loaded is None or self._loaded[0] != key:
                self._loaded = None  # a failed load keeps no stale model
                spec = load_model(**arguments)
                self.loads += 1
                self._loaded = (key, spec)
            spec = self._loaded[1]
            try:
                return copy.deepcopy(spec)
            except Exception:  # noqa: BLE001 (a trusted program that cannot be copied)
                self._loaded = None
                return spec


def _model_key(arguments: dict) -> tuple:
    """What a loaded model depends on, by content: the arguments, the weights' bytes and the
    fields of the model card found for them."""
    from ..model_card import find_card
    from ..store import file_digest

    path = str(arguments["path"])
    card = find_card(path, arguments.get("card"))
    card_text = None if card is None else json.dumps(card.as_dict(), sort_keys=True)
    return (json.dumps(arguments, sort_keys=True, default=str), file_digest(path), card_text)
