"""The model fields shared by the inference and attribution widgets."""

from __future__ import annotations

from magicgui.widgets import CheckBox, LineEdit, SpinBox

from ..errors import PathvizError


class ModelForm:
    """Model file, architecture, trust and preprocessing; ``arguments()`` feeds load_model."""

    def __init__(self):
        self.model_path = LineEdit(label="Model", tooltip="TorchScript, state dict, or pickle")
        self.factory = LineEdit(label="Factory", tooltip="package.module:function for a state dict")
        self.factory_kwargs = LineEdit(label="Factory kwargs", value="{}", tooltip="JSON")
        self.trust_pickle = CheckBox(text="Trust this pickle (it can run code)", value=False)
        self.mean = LineEdit(
            label="Mean", tooltip="three numbers on [0, 1] inputs, e.g. 0.8 0.7 0.7"
        )
        self.std = LineEdit(label="Std", tooltip="three numbers")
        self.input_size = SpinBox(
            label="Input size", value=0, min=0, max=4096, tooltip="0: patches as read"
        )

    @property
    def widgets(self) -> list:
        return [
            self.model_path,
            self.factory,
            self.factory_kwargs,
            self.trust_pickle,
            self.mean,
            self.std,
            self.input_size,
        ]

    def arguments(self) -> dict:
        """load_model's arguments; raises PathvizError naming the field at fault."""
        import json

        if not self.model_path.value.strip():
            raise PathvizError("Model: give a model file first")
        try:
            kwargs = json.loads(self.factory_kwargs.value or "{}")
        except json.JSONDecodeError as exc:
            raise PathvizError(f"Factory kwargs is not JSON: {exc}") from None
        return {
            "path": self.model_path.value.strip(),
            "factory": self.factory.value.strip() or None,
            "factory_kwargs": kwargs,
            "trust_pickle": self.trust_pickle.value,
            "input_size": self.input_size.value or None,
            "mean": _three_numbers(self.mean.value, "Mean"),
            "std": _three_numbers(self.std.value, "Std"),
        }

    def prefill_demo(self) -> None:
        """The demo model and its normalisation."""
        from importlib import resources

        from .._demo_model import MEAN, STD

        self.model_path.value = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
        self.factory.value = "napari_pathviz._demo_model:build_demo_model"
        self.mean.value = " ".join(map(str, MEAN))
        self.std.value = " ".join(map(str, STD))


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
