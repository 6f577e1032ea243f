"""The cohort explorer's per-slide count table of a selection (sortable; a click on a row opens
that slide) and the colour legend."""

from __future__ import annotations

import numpy as np
import pandas as pd

HEADERS = ("slide", "selected", "of patches", "%")


class SlideCountTable:
    """A QTableWidget: one row per slide with selected patches; ``on_open(ID)`` on a click."""

    def __init__(self, on_open):
        from qtpy.QtWidgets import QAbstractItemView, QTableWidget

        self.on_open = on_open
        self.native = QTableWidget(0, len(HEADERS))
        self.native.setHorizontalHeaderLabels(list(HEADERS))
        self.native.setSortingEnabled(True)
        self.native.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.native.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.native.verticalHeader().setVisible(False)
        self.native.horizontalHeader().setStretchLastSection(True)
        self.native.setMinimumHeight(90)
        self.native.setToolTip("patches of the lasso per slide; click a row to open that slide")
        self.native.cellClicked.connect(self._clicked)

    def set_slides(self, codes: np.ndarray, names: list[str]) -> None:
        """The cohort: ``codes[i]`` is the index in ``names`` of row i's slide."""
        self.codes, self.names = codes, names
        self.totals = np.bincount(codes[codes >= 0], minlength=len(names))

    def show_counts(self, cohort_rows) -> None:
        """Counts per slide of the selected cohort rows, most selected first (a bincount of
        slide codes: milliseconds for a million-patch cohort)."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QTableWidgetItem

        table = self.native
        table.setSortingEnabled(False)  # filling a sorting table moves rows under our feet
        table.setRowCount(0)
        if not len(cohort_rows) or not hasattr(self, "codes"):
            table.setSortingEnabled(True)
            return
        picked = self.codes[np.asarray(cohort_rows, np.int64)]
        counts = np.bincount(picked, minlength=len(self.names))
        present = np.flatnonzero(counts)
        table.setRowCount(len(present))
        for r, k in enumerate(present):
            count, total = int(counts[k]), int(self.totals[k])
            values = (self.names[k], count, total, round(100 * count / total, 1))
            for c, value in enumerate(values):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, value)  # numbers sort as numbers
                table.setItem(r, c, item)
        table.setSortingEnabled(True)
        table.sortItems(1, Qt.SortOrder.DescendingOrder)

    def counts(self) -> dict[str, int]:
        """{slide ID: selected patches} as shown."""
        table = self.native
        return {
            table.item(r, 0).text(): int(table.item(r, 1).text()) for r in range(table.rowCount())
        }

    def click_row(self, slide_id: str) -> None:
        """What a click on the slide's row does (for scripts and tests)."""
        for r in range(self.native.rowCount()):
            if self.native.item(r, 0).text() == slide_id:
                self.native.cellClicked.emit(r, 0)
                return
        raise KeyError(slide_id)

    def _clicked(self, r: int, _c: int) -> None:
        item = self.native.item(r, 0)
        if item is not None:
            self.on_open(item.text())


def legend_html(mapping) -> str:
    """A one-line legend: swatches and names (categorical) or a colour ramp with its range."""

    def swatch(rgba) -> str:
        r, g, b = (int(255 * c) for c in rgba[:3])
        return f"<span style='color:#{r:02x}{g:02x}{b:02x}'>■</span>"

    if mapping.kind == "categorical":
        items = [f"{swatch(c)} {name}" for name, c in list(mapping.categories.items())[:20]]
        more = len(mapping.categories) - 20
        tail = f" (+{more} more)" if more > 0 else ""
        return f"<b>{mapping.column}</b>: " + " ".join(items) + tail
    from matplotlib import colormaps

    cmap = colormaps[mapping.colormap]
    ramp = "".join(swatch(cmap(v)) for v in np.linspace(0, 1, 12))
    lo, hi = mapping.limits
    return f"<b>{mapping.column}</b>: {lo:.3g} {ramp} {hi:.3g}"


MISSING = "(not in slides table)"


def as_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as pandas categories: colouring, filtering and counting a million patches
    then work on integer codes instead of a million Python strings."""
    out = frame.copy()
    for column in out.columns:
        dtype = out[column].dtype
        text = pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
        if text and not isinstance(dtype, pd.CategoricalDtype):
            out[column] = out[column].astype("category")
    return out


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categories back to plain text (for the core's patch tables)."""
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype(object)
    return out


def category_colours(values: pd.Series, column: str):
    """render.column_colors' colours of a categorical column, computed on its categories and
    indexed by its codes; missing values (a slide the table lacks) are a category of their own."""
    from ..render import ColorMapping, column_colors

    names = [str(c) for c in values.cat.categories]
    codes = values.cat.codes.to_numpy()
    if (codes < 0).any():
        names.append(MISSING)
        codes = np.where(codes < 0, len(names) - 1, codes)
    small = column_colors(pd.DataFrame({column: pd.Categorical(names)}), column)
    palette = np.array([small.categories[n] for n in names], np.float32).reshape(-1, 4)
    return ColorMapping(column, palette[codes], "categorical", categories=small.categories)
