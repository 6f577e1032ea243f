"""The model fields of the inference and attribution widgets: one form per widget, the same
values in both (the viewer's model in use, ``_model_in_use``)."""

from __future__ import annotations

from magicgui.widgets import CheckBox, LineEdit, SpinBox

from .._model_files import TRUST_BOX
from ..errors import PathvizError
from ._compact import path_field, path_text, special_value_text
from ._model_in_use import ModelInUse
from ._patches_in_use import follow

# The fields a form shares with the other forms of its viewer, by attribute name.
SHARED_FIELDS = (
    "model_path",
    "class_names",
    "trust_model",
    "factory",
    "factory_kwargs",
    "mean",
    "std",
    "input_size",
)


class ModelForm:
    """Model file, class names, architecture, trust and preprocessing; ``arguments()`` feeds
    load_model. Blank fields are filled from the model card beside the weights. Given the
    viewer's ``ModelInUse``, the form shows and changes the values every form of it shows."""

    def __init__(self, shared: ModelInUse | None = None):
        self.model_path = path_field(
            "Model",
            tooltip="weights (safetensors or state dict) with a model card beside them "
            "(<name>.json or model_card.json), or TorchScript, or a pickle",
        )
        self.factory = LineEdit(
            label="Factory",
            tooltip="package.module:function (or a registered architecture's name) building "
            "the architecture of the weights; typing it here is consent to import it "
            "(blank: the model card's)",
        )
        self.factory_kwargs = LineEdit(
            label="Factory kwargs", tooltip="JSON object (blank: the model card's)"
        )
        # Pickles and TorchScript archives are programs: loading or running them can write any
        # file; so is a module a model card names that is not a registered architecture
        # (importing it runs it). Weights whose card names a registered one need no trust.
        self.trust_model = CheckBox(
            text=TRUST_BOX,
            value=False,
            tooltip="pickles, TorchScript archives and a model card's own code (a factory that "
            "is not a registered architecture) run code: tick only if you trust their origin; "
            "weights whose card names a registered architecture need no trust",
        )
        self.mean = LineEdit(
            label="Mean",
            tooltip="three numbers on [0, 1] inputs, e.g. 0.8 0.7 0.7 (blank: the model card's)",
        )
        self.std = LineEdit(label="Std", tooltip="three numbers (blank: the model card's)")
        self.input_size = SpinBox(
            label="Input size",
            value=0,
            min=0,
            max=4096,
            tooltip="0 = auto: the model card's input size, else patches as read",
        )
        special_value_text(self.input_size, "0 = auto")
        self.class_names = LineEdit(
            label="Classes",
            tooltip="the model's output classes, comma-separated, e.g. background, tumour, "
            "stroma (blank: the model card's, shown greyed)",
        )
        self.model_path.changed.connect(self._show_card_classes)
        self.shared = shared
        if shared is not None:
            self._share(shared)

    # -- one model per viewer --------------------------------------------------------------------
    def _share(self, shared: ModelInUse) -> None:
        for name in SHARED_FIELDS:
            field = getattr(self, name)
            if name in shared.values:
                field.value = shared.values[name]
            field.changed.connect(lambda value, name=name: shared.set_value(name, value))
        follow(shared.changed, self._show_shared)
        self._show_card_classes()

    def _show_shared(self, name: str) -> None:
        """Another form of the viewer changed field ``name``: show its value here too."""
        field, value = getattr(self, name), self.shared.values[name]
        if field.value != value:
            field.value = value

    def _show_card_classes(self, _value=None) -> None:
        """The card's class names, greyed in the Classes field while it is blank."""
        from ..model_card import find_card

        names = None
        path = path_text(self.model_path)
        if path:
            try:
                card = find_card(path)
            except (PathvizError, OSError):
                card = None  # said when the model loads
            if card is not None:
                names = card.class_names or (card.head or {}).get("class_names")
        placeholder = f"from the card: {', '.join(names)}" if names else "blank: class 0, 1…"
        self.class_names.native.setPlaceholderText(placeholder)

    @property
    def widgets(self) -> list:
        return [*self.essential, *self.advanced]

    @property
    def essential(self) -> list:
        """What a model with a card needs: the file; and the classes, as the card names them."""
        return [self.model_path, self.class_names]

    @property
    def advanced(self) -> list:
        """Trust (for programs: pickles, TorchScript) and overrides of the model card."""
        return [
            self.trust_model,
            self.factory,
            self.factory_kwargs,
            self.mean,
            self.std,
            self.input_size,
        ]

    def arguments(self) -> dict:
        """load_model's arguments; raises PathvizError naming the field at fault."""
        import json

        if not path_text(self.model_path):
            raise PathvizError("Model: give a model file first")
        kwargs = None  # blank: the model card's
        if self.factory_kwargs.value.strip():
            try:
                kwargs = json.loads(self.factory_kwargs.value)
            except json.JSONDecodeError as exc:
                raise PathvizError(f"Factory kwargs is not JSON: {exc}") from None
            if not isinstance(kwargs, dict):
                raise PathvizError('Factory kwargs must be a JSON object, e.g. {"width": 4}')
        return {
            "path": path_text(self.model_path),
            "factory": self.factory.value.strip() or None,
            "factory_kwargs": kwargs,
            "trust_model": self.trust_model.value,
            "input_size": self.input_size.value or None,
            "mean": _three_numbers(self.mean.value, "Mean"),
            "std": _three_numbers(self.std.value, "Std"),
            "class_names": _class_names(self.class_names.value),
        }

    def prefill_demo(self) -> None:
        """The demo model: its weights; architecture and normalisation come from its card
        (data/demo_model.json), so the other fields stay blank."""
        from importlib import resources

        self.model_path.value = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
        for field in (self.factory, self.factory_kwargs, self.mean, self.std, self.class_names):
            field.value = ""
        self.input_size.value = 0


def _class_names(text: str) -> tuple[str, ...] | None:
    """Comma-separated class names (a name may hold spaces); None when blank."""
    if not text.strip():
        return None
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise PathvizError(f"Classes: an empty class name in {text!r} (separate them by commas)")
    if len(set(names)) != len(names):
        raise PathvizError(f"Classes: a class is named twice in {text!r}")
    return names


def _three_numbers(text: str, name: str):
    text = text.strip()
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise PathvizError(f"{name}: expected three numbers, got {text!r}") from None
    if len(values) != 3:
        raise PathvizError(f"{name}: expected three numbers, got {len(values)}")
    return values
