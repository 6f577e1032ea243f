"""Dock widget "Slide & patches": open a slide, load or generate its patches, colour them.

A thin layer over ``slide``, ``patches`` and ``tissue``: every button calls the same core
function as the CLI. State lives in the layers (the Slide in the image layer's metadata, the
patch table in the points layer's features), not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)

from .._layers import (
    META_COLOR_BY,
    META_SLIDE,
    patches_layer_data,
    slide_layer_data,
)
from ..errors import PathvizError
from ..io.zarr_io import LAYOUTS
from ._compact import (
    add_section,
    collapsed_section,
    narrow,
    path_field,
    path_text,
    row,
    special_value_text,
    status_label,
)
from ._dock_layout import join_pathviz_tabs
from ._lookup import layer_with
from ._notify import report_error
from ._patches_in_use import follow, patches_combo, patches_in_use
from ._viewer_state import same

if TYPE_CHECKING:
    import napari


class SlideLoaderWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        join_pathviz_tabs(self.native)  # opened beside another PathViz dock: a tab
        self._viewer = viewer
        self._worker: Any = None
        self.in_use = patches_in_use(viewer)
        self._make_fields()
        self._lay_out()
        self._connect()

    def _make_fields(self) -> None:
        self.slide_path = path_field(
            "Slide", tooltip="a slide file; for a .zarr folder use Folder…"
        )
        self._browse_slide_dir = PushButton(text="Folder…", tooltip="a .zarr slide folder")
        self.layout_choice = ComboBox(
            label="Layout",
            choices=LAYOUTS,
            value="auto",
            tooltip="stored axis order; xyc for PathFlowAI's {ID}.zarr",
        )
        self.use_mpp = CheckBox(text="Scale in µm where the file says", value=False)
        self.open_slide_button = PushButton(text="Open slide")

        self.table_path = path_field("Patch table", tooltip=".csv, .parquet or PathFlowAI .db")
        self.patch_size = SpinBox(
            label="Patch size",
            value=0,
            min=0,
            max=1_000_000,
            tooltip="0 = auto: the table's patch_size column (or a .db with one table)",
        )
        special_value_text(self.patch_size, "0 = auto")
        self.slide_id = LineEdit(
            label="Slide ID", tooltip="keep these rows; blank: the slide's own when present"
        )
        self.load_table_button = PushButton(text="Load patches")

        self.grid_size = SpinBox(label="Grid patch size", value=224, min=4, max=1_000_000)
        self.min_tissue = FloatSpinBox(label="Min tissue", value=0.5, min=0.0, max=1.0, step=0.05)
        self.grid_button = PushButton(text="Generate tissue grid")
        self.cancel_button = PushButton(text="Cancel", enabled=False)

        self.patches_layer_choice = patches_combo(self.in_use, self._refresh_colors)
        self.color_by = ComboBox(label="Colour by", choices=self._color_choices)
        self.status = status_label()

    def _lay_out(self) -> None:
        """Essential controls first; layout, scale, patch size and grid options in Advanced."""
        self.extend(
            [
                row(self.slide_path, self._browse_slide_dir, label="Slide"),
                self.open_slide_button,
                self.table_path,
                self.load_table_button,
                row(self.grid_button, self.cancel_button),
                self.patches_layer_choice,
                self.color_by,
                self.status,
            ]
        )
        self.advanced, _ = collapsed_section(
            "Advanced: slide layout, patch size, grid",
            [
                self.layout_choice,
                self.use_mpp,
                self.patch_size,
                self.slide_id,
                self.grid_size,
                self.min_tissue,
            ],
        )
        add_section(self, self.advanced)
        narrow(self.native)

    def _connect(self) -> None:
        self._browse_slide_dir.changed.connect(self._browse_folder)
        self.open_slide_button.changed.connect(self.open_slide)
        self.load_table_button.changed.connect(self.load_patches)
        self.grid_button.changed.connect(self.generate_grid)
        self.cancel_button.changed.connect(self.cancel)
        self.color_by.changed.connect(self._recolor)
        follow(self.in_use.choices_changed, self._refresh_colors)
        follow(self.in_use.columns_changed, self._refresh_colors)
        follow(self.in_use.color_changed, self._refresh_colors)
        self._refresh_colors()
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self.show_ampersand_in_tab)  # once napari has docked it

    def show_ampersand_in_tab(self) -> None:
        """Qt's tab bar reads a single & as a shortcut marker and hides it, so the dock's tab
        would read "Slide patches": its title gets && (the title bar itself is napari's)."""
        from qtpy.QtWidgets import QDockWidget

        dock = self.native.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if dock is not None and "&&" not in dock.windowTitle():
            dock.setWindowTitle(dock.windowTitle().replace("&", "&&"))

    # -- layers this widget works on ---------------------------------------------------------
    def slide_layer(self):
        """The active slide layer, else the most recently added one."""
        return layer_with(self._viewer, META_SLIDE)

    def patches_layer(self):
        """The patches layer in use (shared by every PathViz widget of this viewer)."""
        return self.in_use.layer

    # -- actions -----------------------------------------------------------------------------
    def open_slide(self) -> None:
        from ..slide import open_slide

        path = path_text(self.slide_path)
        self._guarded(
            lambda: self._add(
                slide_layer_data(
                    open_slide(path or "<no slide path given>", self.layout_choice.value),
                    self.use_mpp.value,
                )
            )
        )

    def load_patches(self) -> None:
        self._guarded(self._load_patches)

    def _load_patches(self) -> None:
        from ..io.tables import read_table
        from ..patches import PatchTable, patches_for_slide

        path = path_text(self.table_path)
        if not path:
            raise PathvizError("Patch table: give a table path first")
        size = self.patch_size.value or None
        slide_id = self.slide_id.value.strip() or None
        df = read_table(path, size)
        slide_layer = self.slide_layer()
        if slide_layer is None:
            table = PatchTable.from_frame(df, path, patch_size=size, slide_id=slide_id)
            scale = (1.0, 1.0)
        else:
            slide = slide_layer.metadata[META_SLIDE]
            table = patches_for_slide(df, path, slide, patch_size=size, slide_id=slide_id)
            scale = tuple(slide_layer.scale[:2])
        layer = self._add(patches_layer_data(table, scale=scale))
        self._show_slide_prediction(path, layer)

    def _show_slide_prediction(self, path: str, layer) -> None:
        """A two-stage model's table (``pathviz extract``, with or without --features): the
        attention and contribution heatmaps, named with the slide prediction beside it."""
        from ..slide_level import read_slide_prediction_beside
        from ._slide_level import show_slide_level, slide_label

        summary = read_slide_prediction_beside(path)
        if summary is None or "attention" not in layer.features.columns:
            return
        show_slide_level(self._viewer, layer, summary)
        self.status.value += f"; {slide_label(summary)}"

    def generate_grid(self) -> None:
        from napari.qt.threading import create_worker

        slide_layer = self.slide_layer()
        if slide_layer is None:
            self._report(PathvizError("Tissue grid: open a slide first"))
            return
        slide = slide_layer.metadata[META_SLIDE]
        scale = tuple(slide_layer.scale[:2])
        from ..tissue import tissue_grid

        worker = create_worker(
            tissue_grid,
            slide,
            self.grid_size.value,
            None,
            self.min_tissue.value,
            _progress={"desc": f"Tissue grid on {slide.slide_id}"},
            # Reported by _report; connecting it here also stops the worker re-raising errors.
            _connect={"errored": self._report},
            _start_thread=False,
        )

        def add_grid(table) -> None:
            # A cancelled run may still finish in its thread; its result is dropped.
            if worker is self._worker:
                self._add(
                    patches_layer_data(
                        table, color_by="tissue", scale=scale, name=f"{slide.slide_id} tissue grid"
                    )
                )

        worker.returned.connect(add_grid)
        worker.finished.connect(lambda: worker is self._worker and self._grid_done())
        self._worker = worker
        self.grid_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "computing tissue grid…"
        worker.start()

    def cancel(self) -> None:
        """Stops waiting for the running tissue grid; its result will not be added."""
        if self._worker is not None:
            self._worker.quit()
            self._worker = None
            self.status.value = "tissue grid cancelled"
        self._grid_done()

    def _grid_done(self) -> None:
        self.grid_button.enabled = True
        self.cancel_button.enabled = False

    def _recolor(self, column: str | None) -> None:
        layer = self.patches_layer()
        if layer is None or not column or column == layer.metadata.get(META_COLOR_BY):
            return
        self._guarded(lambda: self.in_use.set_color(column))  # for every widget

    # -- helpers -------------------------------------------------------------------------------
    def _color_choices(self, _widget=None) -> list[str]:
        layer = self.patches_layer() if hasattr(self, "_viewer") else None
        return [] if layer is None else [str(c) for c in layer.features.columns]

    def _refresh_colors(self, _event=None) -> None:
        # Refilling the choices must not recolour the layer: only a user's pick does.
        with self.color_by.changed.blocked():
            self.color_by.reset_choices()
            layer = self.patches_layer()
            if layer is not None and layer.metadata.get(META_COLOR_BY) in self.color_by.choices:
                self.color_by.value = layer.metadata[META_COLOR_BY]

    def _add(self, layer_data):
        from napari.layers import Layer

        layer = self._viewer.add_layer(Layer.create(*layer_data))
        self.status.value = f"added {layer.name}"
        if META_COLOR_BY in layer.metadata and not same(layer, self.in_use.layer):
            # A new table does not take over the selection the other widgets act on.
            self.status.value += f"; Patches in use: {self.in_use.name} (change it above)"
        if META_SLIDE in layer.metadata and len(self._viewer.layers) == 1:
            self._viewer.reset_view()
        return layer

    def _guarded(self, action) -> None:
        try:
            action()
        except PathvizError as err:
            self._report(err)

    def _report(self, err: Exception) -> None:
        report_error(self.status, err)

    def _browse_folder(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path = QFileDialog.getExistingDirectory(self.native, "Choose a slide folder")
        if path:
            self.slide_path.value = path
