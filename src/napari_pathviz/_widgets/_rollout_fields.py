"""The Attributions widget's attention-rollout fields: head fusion and discard ratio (as the
CLI's --head-fusion and --discard-ratio), shown only while the method is rollout."""

from __future__ import annotations

from magicgui.widgets import ComboBox, FloatSpinBox

from ..attribution.rollout import HEAD_FUSIONS

ROLLOUT = "rollout"


class RolloutFields:
    """``head_fusion`` and ``discard_ratio``, labelled fields (``widgets``) for the form."""

    def __init__(self):
        self.head_fusion = ComboBox(
            label="Head fusion",
            choices=list(HEAD_FUSIONS),
            value="mean",
            tooltip="how each layer's attention heads are fused: mean (Abnar & Zuidema), max "
            "or min (jacobgil/vit-explain's default is max)",
        )
        self.discard_ratio = FloatSpinBox(
            label="Discard ratio",
            value=0.0,
            min=0.0,
            max=0.99,
            step=0.05,
            tooltip="share of each layer's weakest fused attention set to 0 before the "
            "identity is added, the class token's attention to itself kept (vit-explain's "
            "default is 0.9); 0 = none",
        )
        self.widgets = [self.head_fusion, self.discard_ratio]

    def show_for(self, method: str) -> None:
        for widget in self.widgets:
            widget.visible = method == ROLLOUT

    def options(self) -> dict:
        """The method options for rollout's engine (and its store key)."""
        return {"head_fusion": self.head_fusion.value, "discard_ratio": self.discard_ratio.value}
