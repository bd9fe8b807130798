"""The loaded volumes (documents): each with its own window/level, its title (distinct among the
documents), whether it is synthetic (the volume says so, as its file's header did) and, for a
synthetic one, the document it was made from and whether it has been written anywhere yet; which
one the viewer shows; opening and closing."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.state.display import DisplayState, presets_for
from app.state.events import Event

if TYPE_CHECKING:
    from engine.io import Volume

SYNTHETIC_KEY_PREFIX = "synthetic:"        # the keys of documents made in this session (no file yet)


@dataclass(eq=False)
class Document:
    volume: Volume
    display: DisplayState
    key: str = ""                               # the browser entry it was loaded from, or synthetic:N
    presets: list = field(default_factory=list)
    title: str = ""                             # distinct among the open documents
    ordinal: int = 1                            # 2, 3… for the later documents of the same name
    source: Document | None = None              # what a synthetic document was made from
    plane: str = "auto"                         # the plane synthesis cut it in (its scores cut it alike)
    kept: str = ""                              # where a volume made in this session was last written, if anywhere

    @property
    def unkept(self) -> bool:
        """Made in this session and written nowhere yet: closing it loses it."""
        return self.key.startswith(SYNTHETIC_KEY_PREFIX) and not self.kept

    @property
    def synthetic(self) -> bool:
        return self.volume.synthetic

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
        self.activated = Event()    # (document, or None when the last one closed)
        self.closed = Event()       # (document)
        self.registrations: list = []   # spatial registrations (DICOM REG) in the opened folders: the comparison's
        self._numbers = itertools.count(1)

    def add_registrations(self, found) -> list:
        """Keep the spatial registrations an opened folder held (each file once); the new ones."""
        known = {r.path for r in self.registrations}
        new = [r for r in found if r.path not in known]
        self.registrations.extend(new)
        return new

    def add(self, volume: Volume, *, synthetic: bool = False, key: str = "",
            source: Document | None = None, plane: str = "auto") -> Document:
        """Add a loaded volume (or return the document already loaded from ``key``). ``synthetic``
        marks a volume a model just made (``source`` the document it came from, ``plane`` the one
        the synthesis cut it in: engine.inference.SLICING_PLANES)."""
        if key:
            for doc in self.documents:
                if doc.key == key:
                    return doc
        if synthetic and not volume.synthetic:
            made_from = (source.volume.modality or "") if source is not None else ""
            volume = volume.replace(synthetic=True, derived_from=volume.derived_from or made_from)
        if source is not None and source not in self.documents:
            source = None                       # closed while the model was running
        if volume.synthetic and not key:
            key = f"{SYNTHETIC_KEY_PREFIX}{next(self._numbers)}"
        presets = presets_for(volume.array, volume.modality, volume.unit)
        name = volume.name or key or "volume"
        ordinal = self._free_ordinal(name)
        doc = Document(volume, DisplayState(presets[0]), key, presets,
                       name if ordinal == 1 else f"{name} ({ordinal})", ordinal, source, plane)
        self.documents.append(doc)
        self.added.emit(doc)
        return doc

    def _free_ordinal(self, name: str) -> int:
        """1 for a name no open document has, else the first number not taken: "name (2)", "(3)"…"""
        taken = {d.ordinal for d in self.documents if (d.volume.name or d.key or "volume") == name}
        return next(n for n in itertools.count(1) if n not in taken)

    def find(self, key: str) -> Document | None:
        return next((d for d in self.documents if d.key == key), None)

    def activate(self, doc: Document) -> None:
        if doc is not self.active:
            self.active = doc
            self.activated.emit(doc)

    def unkept(self) -> list[Document]:
        """The documents made in this session and written nowhere yet."""
        return [d for d in self.documents if d.unkept]

    def close(self, doc: Document) -> None:
        """Forget ``doc`` (its memory goes with the last view that shows it); when the viewer showed
        it, show what it was made from, else the last document left, else nothing."""
        if doc not in self.documents:
            return
        self.documents.remove(doc)
        for other in self.documents:
            if other.source is doc:
                other.source = None
        was_active = doc is self.active
        if was_active:
            self.active = doc.source if doc.source in self.documents else (self.documents or [None])[-1]
        self.closed.emit(doc)
        if was_active:
            self.activated.emit(self.active)
