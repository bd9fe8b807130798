"""Mouse schemes of the slice views: which button (and modifier) moves the crosshair, sets the
window, pans or zooms, as SynerMedGen has done so far, as 3D Slicer / ITK-SNAP do, and as OHIF
does; the scheme in use (an app-wide preference, kept in the settings); and the Help menu's Mouse
and Keys dialog, which chooses the scheme and shows its table, generated from the same bindings
so it never disagrees with the views."""
from __future__ import annotations

import html
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout, QTextBrowser, QVBoxLayout, QWidget

CROSSHAIR, WINDOW, PAN, ZOOM = "crosshair", "window", "pan", "zoom"
ACTION_TEXT = {CROSSHAIR: "move the crosshair (linked across planes and views)",
               WINDOW: "window (→ wider) and level (↓ higher)",
               PAN: "pan", ZOOM: "zoom (↑ in, ↓ out)"}
LEFT, MIDDLE, RIGHT = Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton, Qt.MouseButton.RightButton
SHIFT, CTRL = Qt.KeyboardModifier.ShiftModifier, Qt.KeyboardModifier.ControlModifier
_BUTTON_NAMES = {LEFT: "Left", MIDDLE: "Middle", RIGHT: "Right"}
_MODIFIER_NAMES = ((CTRL, "Ctrl"), (SHIFT, "Shift"))


@dataclass(frozen=True)
class Binding:
    button: Qt.MouseButton
    modifier: Qt.KeyboardModifier | None      # None: no Ctrl or Shift held
    action: str

    def matches(self, button: Qt.MouseButton, modifiers: Qt.KeyboardModifier) -> bool:
        held = [m for m, _ in _MODIFIER_NAMES if modifiers & m]
        return button == self.button and held == ([self.modifier] if self.modifier else [])

    def gesture(self) -> str:
        names = dict(_MODIFIER_NAMES)
        return (f"{names[self.modifier]} + " if self.modifier else "") + f"{_BUTTON_NAMES[self.button].lower()} drag"


@dataclass(frozen=True)
class MouseScheme:
    name: str
    title: str
    bindings: tuple[Binding, ...]            # drags (a click of a crosshair binding also moves it)

    def action(self, button: Qt.MouseButton, modifiers: Qt.KeyboardModifier) -> str | None:
        return next((b.action for b in self.bindings if b.matches(button, modifiers)), None)


SCHEMES = {s.name: s for s in (
    MouseScheme("synermedgen", "SynerMedGen (as before)", (
        Binding(LEFT, None, CROSSHAIR), Binding(RIGHT, None, WINDOW), Binding(LEFT, CTRL, WINDOW),
        Binding(MIDDLE, None, PAN), Binding(LEFT, SHIFT, PAN))),
    MouseScheme("slicer", "3D Slicer / ITK-SNAP", (
        Binding(LEFT, None, CROSSHAIR), Binding(LEFT, SHIFT, CROSSHAIR), Binding(MIDDLE, None, PAN),
        Binding(RIGHT, None, ZOOM), Binding(LEFT, CTRL, WINDOW))),
    MouseScheme("ohif", "OHIF", (
        Binding(LEFT, None, WINDOW), Binding(LEFT, SHIFT, CROSSHAIR), Binding(MIDDLE, None, PAN),
        Binding(RIGHT, None, ZOOM), Binding(LEFT, CTRL, PAN))),
)}
DEFAULT_SCHEME = "synermedgen"

_current = [SCHEMES[DEFAULT_SCHEME]]


def current() -> MouseScheme:
    """The scheme every slice view follows."""
    return _current[0]


def use_scheme(name: str) -> MouseScheme:
    """Make ``name`` the scheme of every slice view (an unknown name: the default)."""
    _current[0] = SCHEMES.get(name, SCHEMES[DEFAULT_SCHEME])
    return _current[0]


COMMON_ROWS = (
    ("Wheel, ↑/↓", "one slice towards superior (axial), anterior (coronal) or left (sagittal) — down: back"),
    ("PgUp/PgDn", "ten slices"),
    ("Ctrl + wheel", "zoom; double-click or Home resets"),
    ("Drop files or folders", "anywhere on the window to open them"),
)


def controls_html(scheme: MouseScheme) -> str:
    """The Mouse and Keys table of ``scheme``."""
    rows = [(b.gesture().capitalize(), ACTION_TEXT[b.action]) for b in scheme.bindings]
    crosshair = next(b for b in scheme.bindings if b.action == CROSSHAIR)
    rows.insert(0, (f"{crosshair.gesture().removesuffix(' drag').capitalize()} click", ACTION_TEXT[CROSSHAIR]))
    body = "".join(f"<tr><td><b>{html.escape(g)}</b></td><td>{html.escape(a)}</td></tr>"
                   for g, a in (*rows, *COMMON_ROWS))
    return f"<p><b>{html.escape(scheme.title)}</b></p><table cellspacing='4'>{body}</table>"


class MouseKeysDialog(QDialog):
    """Help ▸ Mouse and Keys: the scheme in use (changing it applies at once and is kept in the
    settings) and what every gesture and key does in it."""

    def __init__(self, settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("Mouse and keys")
        self.scheme = QComboBox()
        for scheme in SCHEMES.values():
            self.scheme.addItem(scheme.title, scheme.name)
        self.scheme.setCurrentIndex(max(0, self.scheme.findData(current().name)))
        self.scheme.currentIndexChanged.connect(self._on_scheme_chosen)
        self.table = QTextBrowser()
        self.table.setMinimumSize(460, 260)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Mouse scheme", self.scheme)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.table, 1)
        layout.addWidget(buttons)
        self.table.setHtml(controls_html(current()))

    def _on_scheme_chosen(self, _index: int) -> None:
        scheme = use_scheme(self.scheme.currentData())
        self.settings.mouse_scheme = scheme.name
        self.table.setHtml(controls_html(scheme))
