"""The shared crosshair: one point in patient LPS millimetres that every linked view shows, so
volumes on different grids in the same physical space stay linked."""
from __future__ import annotations

import numpy as np

from app.state.events import Event


class Cursor:
    def __init__(self) -> None:
        self._position: np.ndarray | None = None
        self.moved = Event()          # (position: np.ndarray) in LPS mm

    @property
    def position(self) -> np.ndarray | None:
        return None if self._position is None else self._position.copy()

    def move_to(self, lps) -> None:
        point = np.asarray(lps, dtype=float).reshape(3)
        if self._position is not None and np.allclose(point, self._position, rtol=0, atol=1e-9):
            return
        self._position = point
        self.moved.emit(point.copy())
