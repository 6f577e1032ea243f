"""The model fields shared by the inference and attribution widgets."""

from __future__ import annotations

from magicgui.widgets import CheckBox, LineEdit, SpinBox

from ..errors import PathvizError
from ._compact import path_field, path_text, special_value_text


class ModelForm:
    """Model file, architecture, trust and preprocessing; ``arguments()`` feeds load_model.
    Blank fields are filled from the model card beside the weights."""

    def __init__(self):
        self.model_path = path_field(
            "Model",
            tooltip="weights (safetensors or state dict) with a model card beside them "
            "(<name>.json or model_card.json), or TorchScript, or a pickle",
        )
        self.factory = LineEdit(
            label="Factory",
            tooltip="package.module:function building the architecture of the weights "
            "(blank: the model card's)",
        )
        self.factory_kwargs = LineEdit(
            label="Factory kwargs", tooltip="JSON object (blank: the model card's)"
        )
        # Pickles and TorchScript archives are programs: loading or running them can write any
        # file. Weights (safetensors, state dicts) with a factory need no trust.
        self.trust_model = CheckBox(
            text="Trust this model (it can run code)",
            value=False,
            tooltip="pickles and TorchScript archives are programs: tick only if you trust "
            "their origin; weights with a model card need no trust",
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

    @property
    def widgets(self) -> list:
        return [*self.essential, *self.advanced]

    @property
    def essential(self) -> list:
        """What a model with a card needs: the file."""
        return [self.model_path]

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
        }

    def prefill_demo(self) -> None:
        """The demo model: its weights; architecture and normalisation come from its card
        (data/demo_model.json), so the other fields stay blank."""
        from importlib import resources

        self.model_path.value = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
        for field in (self.factory, self.factory_kwargs, self.mean, self.std):
            field.value = ""
        self.input_size.value = 0


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
