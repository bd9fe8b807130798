"""The loaded volumes (documents): each with its own window/level and whether it is synthetic,
and which one the viewer shows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.state.display import DisplayState, presets_for
from app.state.events import Event

if TYPE_CHECKING:
    from engine.io import Volume

SYNTHETIC_MARK = "synthetic — research use only"


def looks_synthetic(volume: Volume) -> bool:
    """A volume read from disk is synthetic when its name or notes say so (as our exports do)."""
    texts = (volume.name, *volume.notes)
    return any("synthetic" in text.lower() for text in texts)


@dataclass(eq=False)
class Document:
    volume: Volume
    synthetic: bool
    display: DisplayState
    key: str = ""                               # the browser entry it was loaded from
    presets: list = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.volume.name or self.key or "volume"

    @property
    def label(self) -> str:
        """Title with modality, as the comparison's pickers list it."""
        modality = self.volume.modality or "?"
        return f"{self.title} ({modality}{', synthetic' if self.synthetic else ''})"


class Workspace:
    def __init__(self) -> None:
        self.documents: list[Document] = []
        self.active: Document | None = None
        self.added = Event()        # (document)
        self.activated = Event()    # (document)
        self.removed = Event()      # (document): closed; views drop it so its memory is freed

    def add(self, volume: Volume, *, synthetic: bool | None = None, key: str = "") -> Document:
        """Add a loaded volume (or return the document already loaded from ``key``)."""
        if key:
            for doc in self.documents:
                if doc.key == key:
                    return doc
        presets = presets_for(volume.array, volume.modality)
        doc = Document(volume, looks_synthetic(volume) if synthetic is None else synthetic,
                       DisplayState(presets[0]), key, presets)
        self.documents.append(doc)
        self.added.emit(doc)
        return doc

    def find(self, key: str) -> Document | None:
        return next((d for d in self.documents if d.key == key), None)

    def remove(self, doc: Document) -> None:
        """Close a document; the active one is then none (the window shows another)."""
        if doc in self.documents:
            self.documents.remove(doc)
            if self.active is doc:
                self.active = None
            self.removed.emit(doc)

    def activate(self, doc: Document) -> None:
        if doc is not self.active:
            self.active = doc
            self.activated.emit(doc)
