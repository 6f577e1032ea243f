"""Dock widget "Embedding explorer": UMAP of patch embeddings in a vispy scatter, linked both ways
to the patches on the slide.

State lives in the layers: the UMAP coordinates become ``umap_0``.. columns of the patches
layer's features (NaN where a patch has no embedding); the scatter shows that layer's rows that
have coordinates. A selection in the scatter selects the same patches on the layer and draws them
in a highlight layer (napari only draws a points selection while its layer is active); a
selection on the layer highlights the scatter points. A re-entrancy guard stops the echo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from .._layers import META_COLOR_BY, META_SLIDE, patches_layer_data
from ..errors import Cancelled, PathvizError
from ..render import column_colors
from ._jobs import JobRunner
from ._notify import report_error
from ._selection_link import HIGHLIGHT_LAYER, SelectionLink
from .scatter import MODES, ScatterCanvas

if TYPE_CHECKING:
    import napari

MOSAIC_LAYER = "UMAP mosaic"
META_UMAP = "pathviz_umap"  # points-layer metadata: the UMAP parameters of its umap_* columns


class EmbeddingWidget(SelectionLink, QWidget):
    """The explorer; the scatter <-> slide selection linking lives in ``SelectionLink``."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._syncing = False  # re-entrancy guard between scatter and layer selections
        self._linked_layer = None
        self.rows = np.zeros(0, np.int64)  # scatter point i is row rows[i] of the patches layer
        self._pending_rows: np.ndarray | None = None  # a scatter selection not yet on the layer

        self.embeddings_path = LineEdit(
            label="Embeddings", tooltip=".parquet/.csv, .npy/.npz (+ keys), PathFlowAI .pkl"
        )
        self.keys_path = LineEdit(label="Keys (.npy)", tooltip="key table for a bare array")
        self.trust_pickle = CheckBox(
            text="Trust this pickle (it can run code)",
            value=False,
            tooltip="PathFlowAI's embeddings.pkl is a pickle: load it only if you trust it",
        )
        self.patches_layer_choice = ComboBox(
            label="Patches layer", choices=self._patch_layers, nullable=True
        )
        self.components = ComboBox(label="Components", choices=[2, 3], value=2)
        self.n_neighbors = SpinBox(label="n_neighbors", value=15, min=2, max=500)
        self.min_dist = FloatSpinBox(label="min_dist", value=0.1, min=0.0, max=1.0, step=0.05)
        self.metric = ComboBox(
            label="Metric",
            value="euclidean",
            choices=["euclidean", "cosine", "manhattan", "correlation"],
        )
        self.pca = SpinBox(
            label="PCA dims",
            value=50,
            min=0,
            max=4096,
            tooltip="reduce to this many dimensions first when there are more; 0: off",
        )
        self.seed = SpinBox(
            label="Seed",
            value=-1,
            min=-1,
            max=2**31 - 1,
            tooltip="-1: none (umap-learn runs multi-threaded)",
        )
        self.background_column = ComboBox(
            label="Background col",
            choices=self._numeric_columns,
            nullable=True,
            tooltip="PathFlowAI's -rb",
        )
        self.max_background = FloatSpinBox(
            label="Max bg area", value=0.05, min=0, max=1, step=0.05, tooltip="PathFlowAI's -ma"
        )
        self.knn = ComboBox(label="k-NN", choices=["auto", "nndescent", "torch"], value="auto")
        self.run_button = PushButton(text="Run UMAP")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self.status = Label(value="")
        self._jobs = JobRunner(
            self.run_button, self.cancel_button, self._show_progress, self._report
        )

        self.color_by = ComboBox(label="Colour by", choices=self._feature_columns)
        self.mode = ComboBox(
            label="Mouse",
            choices=list(MODES),
            value="lasso",
            tooltip="lasso / rectangle select (Shift adds); pan to navigate",
        )
        self.centre_button = PushButton(text="Centre slide on selection")
        self.mosaic_zoom = FloatSpinBox(label="Mosaic zoom", value=0.25, min=0.05, max=2, step=0.05)
        self.sort_col = ComboBox(label="Mosaic sort", choices=self._numeric_columns, nullable=True)
        self.sort_mode = ComboBox(label="Sort mode", choices=["asc", "desc"], value="asc")
        self.mosaic_button = PushButton(text="Image mosaic")
        self.export_path = LineEdit(label="Export to", tooltip="file path for the exports below")
        self.export_coords_button = PushButton(text="UMAP coordinates")
        self.export_selection_button = PushButton(text="Selection as patch table")
        self.export_png_button = PushButton(text="Scatter PNG")
        self.legend = Label(value="")

        self.scatter = ScatterCanvas()
        self.scatter.native.setMinimumHeight(320)
        self.scatter.set_mode("lasso")
        self.scatter.on_select = self._scatter_selected
        self.scatter.on_click = self.jump_to
        self.scatter.on_hover = self._hover_text

        # Controls above the scatter, the scatter, then what acts on its result.
        self.controls = Container(
            widgets=[
                self.embeddings_path,
                self.keys_path,
                self.trust_pickle,
                self.patches_layer_choice,
                self.components,
                self.n_neighbors,
                self.min_dist,
                self.metric,
                self.pca,
                self.seed,
                self.background_column,
                self.max_background,
                self.knn,
                Container(
                    widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
                ),
                self.progress,
                self.status,
                self.color_by,
                self.mode,
            ]
        )
        self.actions = Container(
            widgets=[
                self.legend,
                self.centre_button,
                self.mosaic_zoom,
                self.sort_col,
                self.sort_mode,
                self.mosaic_button,
                self.export_path,
                Container(
                    widgets=[
                        self.export_coords_button,
                        self.export_selection_button,
                        self.export_png_button,
                    ],
                    layout="horizontal",
                    labels=False,
                ),
            ]
        )
        # The parameters scroll, so the dock fits a laptop screen; the scatter keeps its room.
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.controls.native)
        scroll.setMinimumHeight(160)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll, stretch=1)
        layout.addWidget(self.scatter.native, stretch=2)
        layout.addWidget(self.actions.native)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.color_by.changed.connect(self._recolour)
        self.mode.changed.connect(self.scatter.set_mode)
        self.centre_button.changed.connect(self.centre_on_selection)
        self.mosaic_button.changed.connect(self.show_mosaic)
        self.export_coords_button.changed.connect(lambda: self._export(self.export_coords))
        self.export_selection_button.changed.connect(lambda: self._export(self.export_selection))
        self.export_png_button.changed.connect(lambda: self._export(self.scatter.render_png))
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_choices)
        self.patches_layer_choice.changed.connect(self._refresh_choices)

    # -- choices -------------------------------------------------------------------------------
    def _patch_layers(self, _widget=None) -> list:
        if not hasattr(self, "_viewer"):
            return []
        return [
            ly.name
            for ly in self._viewer.layers
            if META_COLOR_BY in ly.metadata and ly.name != HIGHLIGHT_LAYER
        ]

    def patches_layer(self):
        """The chosen patches layer, else the most recent one, else None."""
        name = self.patches_layer_choice.value
        if name and name in self._viewer.layers:
            return self._viewer.layers[name]
        names = self._patch_layers()
        return self._viewer.layers[names[-1]] if names else None

    def _feature_columns(self, _widget=None) -> list[str]:
        layer = self.patches_layer() if hasattr(self, "_viewer") else None
        if layer is None:
            return []
        return [str(c) for c in layer.features.columns if not str(c).startswith("umap_")]

    def _numeric_columns(self, _widget=None) -> list[str]:
        layer = self.patches_layer() if hasattr(self, "_viewer") else None
        if layer is None:
            return []
        return [
            str(c)
            for c in layer.features.columns
            if layer.features[c].dtype.kind in "fiu"
            and not str(c).startswith("umap_")
            and str(c) not in ("x", "y", "patch_size")
        ]

    def _refresh_choices(self, _event=None) -> None:
        # Refilling choices never recolours: only the user's pick of a colour column does.
        with self.color_by.changed.blocked(), self.patches_layer_choice.changed.blocked():
            for widget in (
                self.patches_layer_choice,
                self.color_by,
                self.background_column,
                self.sort_col,
            ):
                widget.reset_choices()

    # -- UMAP ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Loads the embeddings, joins them to the patches layer and runs UMAP off the GUI
        thread; the result lands in the layer's features and in the scatter."""
        from ..embedding import UMAPParams
        from ..patches import PatchTable

        path = self.embeddings_path.value.strip()
        if not path:
            self._report(PathvizError("Embeddings: give an embeddings file first"))
            return
        layer = self.patches_layer()
        patches = (
            None
            if layer is None
            else PatchTable(
                layer.features.drop(
                    columns=[c for c in layer.features.columns if str(c).startswith("umap_")]
                ),
                layer.name,
            )
        )
        params = UMAPParams(
            n_components=int(self.components.value),
            n_neighbors=self.n_neighbors.value,
            min_dist=self.min_dist.value,
            metric=self.metric.value,
            pca=self.pca.value or None,
            random_state=None if self.seed.value < 0 else self.seed.value,
        )
        job = _UmapJob(
            path,
            self.keys_path.value.strip() or None,
            self.trust_pickle.value,
            patches,
            self.background_column.value,
            self.max_background.value,
            params,
            self.knn.value,
        )
        self.status.value = "running UMAP…"
        self._jobs.start(job.run, lambda result: self._umap_done(result, layer))

    def cancel(self) -> None:
        self._jobs.cancel()
        self.status.value = "cancelling…"

    def _show_progress(self, fraction: float, stage: str) -> None:
        self.progress.value = int(round(100 * fraction))
        self.status.value = stage

    def _umap_done(self, result, layer) -> None:
        from napari.utils.notifications import show_warning

        es, coords = result
        for message in es.report.messages():
            show_warning(message)
        if layer is None:
            layer = self._add_patches_layer(es)
        self.write_coords_to_layer(layer, es.table.df, coords)
        self.status.value = f"UMAP of {len(coords)} patches"
        self.progress.value = 100

    def _add_patches_layer(self, es):
        from napari.layers import Layer

        slide_layer = next((ly for ly in self._viewer.layers if META_SLIDE in ly.metadata), None)
        scale = (1.0, 1.0) if slide_layer is None else tuple(slide_layer.scale[:2])
        layer = self._viewer.add_layer(
            Layer.create(*patches_layer_data(es.table, scale=scale, name="embedded patches"))
        )
        self.patches_layer_choice.reset_choices()
        self.patches_layer_choice.value = layer.name
        return layer

    def write_coords_to_layer(self, layer, rows_df, coords: np.ndarray) -> None:
        """Stores UMAP coordinates as umap_* feature columns of the patches layer."""
        from ..patches import match_rows

        features = layer.features.drop(
            columns=[c for c in layer.features.columns if str(c).startswith("umap_")]
        )
        where = match_rows(rows_df, features)
        found = where >= 0
        for j in range(coords.shape[1]):
            column = np.full(len(features), np.nan, np.float32)
            column[where[found]] = coords[found, j]
            features[f"umap_{j}"] = column
        layer.features = features
        with self.patches_layer_choice.changed.blocked():
            self.patches_layer_choice.reset_choices()
            self.patches_layer_choice.value = layer.name
        self.show_layer(layer)

    def show_layer(self, layer) -> None:
        """Fills the scatter from a patches layer's umap_* columns and links the selections."""
        columns = sorted(
            (c for c in layer.features.columns if str(c).startswith("umap_")),
            key=lambda c: int(str(c)[5:]),
        )
        if not columns:
            raise PathvizError(f"layer {layer.name!r} has no UMAP coordinates yet: run UMAP")
        coords = layer.features[columns].to_numpy(dtype=np.float32)
        self.rows = np.flatnonzero(np.isfinite(coords).all(axis=1))
        self._link(layer)
        self._refresh_choices()
        column = self.color_by.value or layer.metadata.get(META_COLOR_BY)
        colours = self._colours(layer, column)
        self.scatter.set_data(coords[self.rows], colours)
        self._layer_selection_changed()

    def _colours(self, layer, column) -> np.ndarray:
        if column is None or column not in layer.features.columns:
            return np.tile(np.float32((0.6, 0.8, 1.0, 1.0)), (len(self.rows), 1))
        mapping = column_colors(layer.features.iloc[self.rows], column)
        self.legend.value = _legend_html(mapping)
        return mapping.rgba

    def _recolour(self, column: str | None) -> None:
        layer = self._linked_layer
        if layer is not None and len(self.rows):
            self.scatter.set_colors(self._colours(layer, column))

    def _hover_text(self, index: int) -> str:
        layer = self._linked_layer
        if layer is None:
            return ""
        row = layer.features.iloc[self.rows[index]]
        text = f"{row['ID']}  x={row['x']} y={row['y']} size={row['patch_size']}"
        column = self.color_by.value
        if column and column in row.index:
            text += f"\n{column}: {row[column]}"
        return text

    # -- mosaic and exports --------------------------------------------------------------------
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
        path = self.export_path.value.strip()
        try:
            if not path:
                raise PathvizError("Export to: give a file path first")
            action(path)
            self.status.value = f"wrote {path}"
        except PathvizError as err:
            self._report(err)

    def _report(self, err: Exception) -> None:
        from napari.utils.notifications import show_info

        if isinstance(err, Cancelled):
            show_info("UMAP cancelled")
        report_error(self.status, err)


class _UmapJob:
    """The work of one Run, done in a worker thread: load, join, filter, UMAP."""

    def __init__(self, path, keys, trust, patches, background, max_area, params, knn):
        self.path, self.keys, self.trust, self.patches = path, keys, trust, patches
        self.background, self.max_area, self.params, self.knn = background, max_area, params, knn

    def run(self, progress, cancelled):
        import warnings

        from ..embedding import load_embeddings, remove_background, umap_embed

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report carries them to the GUI
            es = load_embeddings(
                self.path, keys=self.keys, trust_pickle=self.trust, patches=self.patches
            )
        if self.background:
            es = remove_background(es, self.background, self.max_area)
        coords = umap_embed(
            es.features, self.params, knn=self.knn, progress=progress, cancelled=cancelled
        )
        return es, coords


def _legend_html(mapping) -> str:
    def swatch(rgba) -> str:
        r, g, b = (int(255 * c) for c in rgba[:3])
        return f"<span style='color:#{r:02x}{g:02x}{b:02x}'>■</span>"

    if mapping.kind == "categorical":
        items = [f"{swatch(c)} {name}" for name, c in list(mapping.categories.items())[:20]]
        return f"<b>{mapping.column}</b>: " + " ".join(items)
    from matplotlib import colormaps

    cmap = colormaps[mapping.colormap]
    ramp = "".join(swatch(cmap(v)) for v in np.linspace(0, 1, 12))
    lo, hi = mapping.limits
    return f"<b>{mapping.column}</b>: {lo:.3g} {ramp} {hi:.3g}"
