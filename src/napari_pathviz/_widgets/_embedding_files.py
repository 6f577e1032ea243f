"""The embedding explorer's file side: load UMAP coordinates (e.g. ``umap_coords.csv``) onto the
patches in use, the image mosaic of the scatter, and the exports.

``EmbeddingFiles`` is a mixin of the EmbeddingWidget; it uses the widget's ``_viewer``,
``in_use``, ``scatter``, ``rows``, ``_linked_layer``, ``selected_rows``, ``status``,
``write_coords_to_layer``, ``_add_patches_layer`` and ``_report``.
"""

from __future__ import annotations

import re

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, PushButton

from .._layers import META_SLIDE
from ..errors import PathvizError
from ._compact import collapsed_section, path_field, path_text, row

MOSAIC_LAYER = "UMAP mosaic"


class EmbeddingFiles:
    """Coordinates in, mosaic and exports out."""

    def _build_files_section(self, numeric_columns):
        """The fields and buttons, in a collapsed section under the scatter."""
        self.coords_path = path_field(
            "Coordinates",
            tooltip="umap_coords.csv from pathviz umap or Export: its umap_* columns are "
            "joined to the patches in use by ID, x, y, patch_size",
        )
        self.load_coords_button = PushButton(text="Load coordinates")
        self.mosaic_zoom = FloatSpinBox(label="Mosaic zoom", value=0.25, min=0.05, max=2, step=0.05)
        self.sort_col = ComboBox(label="Mosaic sort", choices=numeric_columns, nullable=True)
        self.sort_mode = ComboBox(label="Sort mode", choices=["asc", "desc"], value="asc")
        self.mosaic_button = PushButton(text="Image mosaic")
        self.export_path = path_field("Export to", mode="w", tooltip="file for the exports below")
        self.export_coords_button = PushButton(text="Coordinates")
        self.export_selection_button = PushButton(text="Selection")
        self.export_png_button = PushButton(text="Scatter PNG")
        section, _ = collapsed_section(
            "Coordinates, mosaic, export",
            [
                self.coords_path,
                self.load_coords_button,
                self.mosaic_zoom,
                self.sort_col,
                self.sort_mode,
                self.mosaic_button,
                self.export_path,
                row(
                    self.export_coords_button,
                    self.export_selection_button,
                    self.export_png_button,
                    label="Export",
                ),
            ],
        )
        self.load_coords_button.changed.connect(self.load_coordinates)
        self.mosaic_button.changed.connect(self.show_mosaic)
        self.export_coords_button.changed.connect(lambda: self._export(self.export_coords))
        self.export_selection_button.changed.connect(lambda: self._export(self.export_selection))
        self.export_png_button.changed.connect(lambda: self._export(self.scatter.render_png))
        return section

    # -- coordinates in ------------------------------------------------------------------------
    def load_coordinates(self) -> None:
        try:
            self._load_coordinates(path_text(self.coords_path))
        except PathvizError as err:
            self._report(err)

    def _load_coordinates(self, path: str) -> None:
        """umap_* columns of a table onto the patches in use (no new layer when one is in use)."""
        from ..io.tables import read_table
        from ..patches import PatchTable, match_rows

        if not path:
            raise PathvizError("Coordinates: give a umap_coords table first")
        table = PatchTable.from_frame(read_table(path), path)
        columns = sorted(
            (c for c in table.df.columns if re.fullmatch(r"umap_\d+", str(c))),
            key=lambda c: int(str(c)[5:]),
        )
        if not columns:
            raise PathvizError(f"{path}: no umap_0, umap_1 columns (pathviz umap writes them)")
        layer = self.in_use.layer
        if layer is None:
            layer = self._add_patches_layer(table.df.drop(columns=columns), path)
        elif not (match_rows(table.df, layer.features) >= 0).any():
            raise PathvizError(f"{path}: no row matches a patch of {layer.name!r} (ID, x, y, size)")
        self.write_coords_to_layer(layer, table.df, table.df[columns].to_numpy(np.float32))
        self.status.value = f"{path}: coordinates of {len(self.rows)} patches of {layer.name}"

    # -- mosaic --------------------------------------------------------------------------------
    def show_mosaic(self) -> None:
        try:
            self._show_mosaic()
        except PathvizError as err:
            self._report(err)

    def _show_mosaic(self) -> None:
        from ..mosaic import umap_mosaic
        from ..patches import PatchTable

        layer = self._linked_layer
        if layer is None or not len(self.rows):
            raise PathvizError("Mosaic: run UMAP first")
        slides = {
            ly.metadata[META_SLIDE].slide_id: ly.metadata[META_SLIDE]
            for ly in self._viewer.layers
            if META_SLIDE in ly.metadata
        }
        table = PatchTable(layer.features.iloc[self.rows].reset_index(drop=True), layer.name)
        missing = sorted(set(table.df["ID"].astype(str)) - set(slides))
        if missing:
            raise PathvizError(f"Mosaic: open the slide(s) {', '.join(missing[:3])} first")
        mosaic = umap_mosaic(
            slides,
            table,
            self.scatter.coords[:, :2],
            zoom=self.mosaic_zoom.value,
            sort_col=self.sort_col.value,
            sort_mode=self.sort_mode.value,
        )
        slide = slides[str(table.df["ID"].iat[0])]
        # Beside the slide, as tall as it, so both are seen together.
        scale = slide.height / mosaic.image.shape[0] * np.asarray(layer.scale[-2:])
        translate = (0.0, slide.width * 1.05 * float(layer.scale[-1]))
        if MOSAIC_LAYER in self._viewer.layers:
            self._viewer.layers.remove(MOSAIC_LAYER)
        self._viewer.add_image(
            mosaic.image, name=MOSAIC_LAYER, rgb=True, scale=tuple(scale), translate=translate
        )

    # -- exports -------------------------------------------------------------------------------
    def export_coords(self, path: str) -> None:
        from ..embedding_plot import write_coords

        layer = self._linked_layer
        if layer is None or not len(self.rows):
            raise PathvizError("Export: run UMAP first")
        write_coords(layer.features.iloc[self.rows], self.scatter.coords, path)

    def export_selection(self, path: str) -> None:
        from ..io.tables import write_table

        layer = self._linked_layer
        rows = self.selected_rows()
        if layer is None or not len(rows):
            raise PathvizError("Export: select patches in the scatter first")
        write_table(layer.features.iloc[rows].reset_index(drop=True), path)

    def _export(self, action) -> None:
        path = path_text(self.export_path)
        try:
            if not path:
                raise PathvizError("Export to: give a file path first")
            action(path)
            self.status.value = f"wrote {path}"
        except PathvizError as err:
            self._report(err)
