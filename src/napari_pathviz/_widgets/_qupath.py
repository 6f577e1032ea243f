"""QuPath in napari: export the selected patches (a lasso in the scatter selects them on the
slide too) as QuPath annotations or tiles, and label the patches by the annotations of a QuPath
GeoJSON opened as a shapes layer. A small container, so that the loader (or the plugin menu) can
hold it; the work is in ``_qupath_layers``, shared with nothing GUI-specific."""

from __future__ import annotations

import napari
from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, PushButton

from ..errors import PathvizError
from ._compact import path_field, path_text, row, status_label
from ._dock_layout import join_pathviz_tabs
from ._notify import report_error
from ._patches_in_use import patches_combo, patches_in_use


class QuPathWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        # The patches layer in use, shared with every PathViz widget of the viewer: its
        # selection (a lasso in the embedding scatter too) is what Export selection writes.
        self.in_use = patches_in_use(viewer)
        self.patches = patches_combo(self.in_use)
        self.annotations = ComboBox(label="Annotations", choices=self._shapes_layers)
        self.object_type = ComboBox(
            label="Export as", choices=["annotation", "tile"], value="annotation"
        )
        self.class_name = LineEdit(label="Class", value="selection")
        self.out = path_field("GeoJSON", mode="w", filter="*.geojson")
        self.min_coverage = FloatSpinBox(
            label="Min coverage", value=0.5, min=0.01, max=1.0, step=0.05
        )
        self.export_button = PushButton(text="Export selection")
        self.label_button = PushButton(text="Label patches")
        self.status = status_label()
        super().__init__(
            widgets=[
                self.patches,
                self.object_type,
                self.class_name,
                self.out,
                self.annotations,
                self.min_coverage,
                row(self.export_button, self.label_button),
                self.status,
            ]
        )
        join_pathviz_tabs(self.native)  # opened beside another PathViz dock: a tab
        self.export_button.changed.connect(self.export_selection)
        self.label_button.changed.connect(self.label_patches)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)

    def _shapes_layers(self, _widget=None) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, napari.layers.Shapes)]

    def export_selection(self) -> None:
        from .._qupath_layers import export_selected_patches

        try:
            layer = self._patches_layer()
            path = path_text(self.out)
            if not path.lower().endswith(".geojson"):
                raise PathvizError("GeoJSON: choose a .geojson file to write")
            selected = len(self.in_use.selected_rows())  # a pending lasso reaches the layer
            n = export_selected_patches(
                layer,
                path,
                object_type=self.object_type.value,
                class_name=self.class_name.value.strip() or "selection",
            )
        except PathvizError as err:
            report_error(self.status, err)
            return
        self.status.value = f"wrote {n} patches as {self.object_type.value}s to {path}"
        if not selected:
            self.status.value += " (none selected: all patches of the layer)"

    def label_patches(self) -> None:
        from .._qupath_layers import label_patches_layer

        try:
            points = self._patches_layer()
            shapes = self._chosen(self.annotations, "a QuPath annotations layer")
            added = label_patches_layer(points, shapes, min_coverage=self.min_coverage.value)
        except PathvizError as err:
            report_error(self.status, err)
            return
        self.in_use.set_color(added[-1])  # the labels at once, on the slide and in the scatter
        self.status.value = f"{points.name}: added {', '.join(added)}"

    def _patches_layer(self):
        if self.in_use.layer is None:
            raise PathvizError("open a patches layer first")
        return self.in_use.layer

    @staticmethod
    def _chosen(combo: ComboBox, what: str):
        if combo.value is None:
            raise PathvizError(f"open {what} first")
        return combo.value
