"""The cohort explorer's per-slide count table of a selection (sortable; a click on a row opens
that slide) and the colour legend."""

from __future__ import annotations

import numpy as np

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

    def show_counts(self, frame, cohort_rows) -> None:
        """Counts per slide of the selected cohort rows, most selected first."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QTableWidgetItem

        table = self.native
        table.setSortingEnabled(False)  # filling a sorting table moves rows under our feet
        table.setRowCount(0)
        if frame is None or not len(cohort_rows):
            table.setSortingEnabled(True)
            return
        ids = frame["ID"].to_numpy()
        selected = ids[np.asarray(cohort_rows, np.int64)]
        names, counts = np.unique(selected, return_counts=True)
        totals = dict(zip(*np.unique(ids, return_counts=True), strict=True))
        table.setRowCount(len(names))
        for r, (name, count) in enumerate(zip(names, counts, strict=True)):
            values = (
                str(name),
                int(count),
                int(totals[name]),
                round(100 * count / totals[name], 1),
            )
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
