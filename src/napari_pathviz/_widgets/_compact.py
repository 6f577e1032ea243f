"""Pieces that keep the dock widgets small enough for a 1440 x 900 screen: collapsed
"Advanced" sections, button rows, file pickers for path fields, and status lines that wrap."""

from __future__ import annotations

import html

from magicgui.widgets import Container, FileEdit, Label

# Dock widgets share the right-hand column; this keeps it to about a quarter of a laptop
# screen, so the slide canvas keeps at least half the window.
DOCK_WIDTH = 340


# An opened section scrolls past this height, so opening one never makes the docks taller
# than the screen (napari docks a magicgui container's inner widget: no scroll area of its own).
SECTION_HEIGHT = 210


def collapsed_section(
    title: str, widgets: list, labels: bool = True, max_height: int | None = SECTION_HEIGHT
):
    """A collapsed section (superqt's QCollapsible, shipped with napari) holding magicgui
    widgets; click its title to open it. Its content scrolls beyond ``max_height`` (None: the
    caller scrolls). Returns (QCollapsible, the inner Container)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea
    from superqt import QCollapsible

    inner = Container(widgets=widgets, labels=labels)
    inner.native.layout().setContentsMargins(0, 0, 0, 0)
    content = inner.native
    if max_height is not None:
        content = QScrollArea()
        content.setWidgetResizable(True)
        content.setFrameShape(QFrame.Shape.NoFrame)
        content.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content.setWidget(inner.native)
        content.setMaximumHeight(max_height)
    section = QCollapsible(title)
    section.setDuration(0)  # no animation: open at once
    section.addWidget(content)
    section.layout().setContentsMargins(0, 0, 0, 0)
    section.collapse(animate=False)
    return section, inner


class StatusLabel(Label):
    """A widget's status line that never cuts its text: it wraps at spaces within the dock's
    width, and its tooltip holds the whole text (a long path has no space to wrap at). The
    text can be selected and copied."""

    def __init__(self, value: str = ""):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QSizePolicy

        super().__init__(value=value)
        native = self.native
        native.setWordWrap(True)
        native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # magicgui's Label is Fixed (as wide as its text): that widened or cut the dock. Take
        # the width the dock gives, and the height the wrapped text needs.
        policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        policy.setHeightForWidth(True)
        native.setSizePolicy(policy)
        # Qt sizes a wrapping label's least height at its least width: at 40 px a 230-character
        # warning asked for 530 px, and the window grew past a laptop's screen.
        native.setMinimumWidth(STATUS_MIN_WIDTH)

    @property
    def value(self) -> str:
        return Label.value.fget(self)

    @value.setter
    def value(self, text: str) -> None:
        Label.value.fset(self, text)
        text = str(text)
        # Rich text, so that Qt wraps a long tooltip instead of drawing one screen-wide line.
        self.native.setToolTip(f"<p>{html.escape(text)}</p>" if text else "")


STATUS_MIN_WIDTH = 300  # px, about a dock's width: a long message wraps to a few lines, not dozens


def status_label() -> StatusLabel:
    """The status line every PathViz widget shows its messages in (see StatusLabel)."""
    return StatusLabel()


def add_section(container: Container, section) -> None:
    """Appends a Qt section (from collapsed_section) below a magicgui container's widgets."""
    container.native.layout().addWidget(section)


def row(*widgets, label: str = "") -> Container:
    """Widgets side by side, e.g. Run and Cancel."""
    box = Container(widgets=list(widgets), layout="horizontal", labels=False, label=label)
    box.margins = (0, 0, 0, 0)
    return box


def path_field(label: str, mode: str = "r", tooltip: str = "", filter: str | None = None):
    """A path field with a file-dialog button (magicgui FileEdit); blank means None.
    mode: "r" an existing file, "w" a file to write, "d" a folder."""
    field = FileEdit(label=label, mode=mode, nullable=True, tooltip=tooltip, filter=filter)
    field.line_edit.native.setPlaceholderText(
        {"r": "a file…", "w": "a file to write…", "d": "a folder…"}[mode]
    )
    return field


def path_text(field) -> str:
    """A path field's value as text, "" when blank."""
    value = field.value
    return "" if value is None else str(value).strip()


def narrow(native, width: int = DOCK_WIDTH) -> None:
    """Caps a dock widget's width (its fields shrink; labels and buttons stay whole)."""
    native.setMaximumWidth(width)


def special_value_text(spin, text: str) -> None:
    """Says what the spin box's lowest value means, e.g. "0 = auto": in its label, and in the
    box itself where Qt can (superqt's large-integer spin box cannot)."""
    spin.label = f"{spin.label} ({text})"
    native = spin.native
    if not hasattr(native, "setSpecialValueText") or type(native).__module__.startswith("superqt"):
        return
    native.setSpecialValueText(text)
    value = native.value()
    native.blockSignals(True)  # redraw the shown text: Qt only does so when the value changes
    native.setValue(value + 1 if value < native.maximum() else value - 1)
    native.setValue(value)
    native.blockSignals(False)
