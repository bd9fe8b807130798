"""A minimal event for the view-models: callbacks called in order; bound methods are held weakly
so that a view that goes away stops listening without having to disconnect."""
from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any


class Event:
    def __init__(self) -> None:
        self._refs: list[Callable[[], Callable | None]] = []

    def connect(self, callback: Callable[..., Any]) -> None:
        if inspect.ismethod(callback):
            self._refs.append(weakref.WeakMethod(callback))
        else:
            self._refs.append(lambda cb=callback: cb)

    def disconnect(self, callback: Callable[..., Any]) -> None:
        self._refs = [r for r in self._refs if r() not in (None, callback)]

    def emit(self, *args: Any) -> None:
        for ref in list(self._refs):
            callback = ref()
            if callback is None:
                self._refs.remove(ref)
            else:
                callback(*args)
